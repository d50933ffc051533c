"""python -m edgecsp.data."""

from __future__ import annotations

import pytest

from edgecsp.data.__main__ import main as data_main


def test_cli(tmp_path, capsys):
    assert data_main(["shapes", "--out", str(tmp_path / "s"), "--train", "2", "--val", "1", "--workers", "1"]) == 0
    assert (tmp_path / "s" / "train" / "annotations.json").is_file()
    assert data_main(["info", str(tmp_path / "s" / "val")]) == 0
    assert "1 images" in capsys.readouterr().out
    for argv, message in ((["info", str(tmp_path / "missing")], "expected an existing file or folder"),
                          (["shapes", "--out", str(tmp_path / "t"), "--seed", "-1"], "--seed: expected an integer")):
        with pytest.raises(SystemExit) as exit_:  # refused by the option types, one line
            data_main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    (tmp_path / "empty").mkdir()
    assert data_main(["info", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
