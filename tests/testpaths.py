"""Where the tests find the repository and the shared test data, wherever a test file sits.

The shared data (the published Darknet cfgs) sit beside the checkout (../shared) or, for a git
worktree one level deeper, a level further up; tests that need them skip when neither exists.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = next((p / "shared" for p in REPO.parents[:3] if (p / "shared").is_dir()), REPO.parent / "shared")
CFG_DIR = SHARED / "darknet-cfg"
