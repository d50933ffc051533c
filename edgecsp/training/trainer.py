"""The training loop: augmentation, YOLO loss, AdamW with warm-up and cosine decay, EMA weights,
deterministic per seed and resumable from the last finished epoch."""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from edgecsp import __version__
from edgecsp.data.coco import CocoDataset
from edgecsp.errors import EdgeCSPError
from edgecsp.models.checkpoint import (
    architecture_of,
    describe,
    input_size_of,
    read_checkpoint,
    resize_of,
    save_checkpoint,
)
from edgecsp.models.detector import Detector
from edgecsp.training.anchors import anchor_fitness, fit_anchors
from edgecsp.training.augment import augment
from edgecsp.training.loss import YoloLoss


@dataclass
class TrainSettings:
    epochs: int = 30
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_iters: int = 300
    ema_decay: float = 0.999
    seed: int = 0
    threads: int = 0  # 0: torch's default
    workers: int = 0  # data loader processes (0: augment in the training process)
    device: str = "cpu"
    stop_after: int | None = None  # end this run after that epoch (continue later with resume)
    extra: dict = field(default_factory=dict)


class ModelEMA:
    """Exponential moving average of weights; its decay ramps up so early epochs are not frozen."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        self.decay, self.updates = decay, 0
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / 1000))
        msd = model.state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def load_training_images(dataset: CocoDataset, max_side: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Decode every image once, shrunk so its long side is at most ``max_side`` (boxes follow)."""
    items = []
    for i in tqdm(range(len(dataset)), desc="loading images", unit="img", leave=False):
        image, boxes, labels = dataset[i]
        h, w = image.shape[:2]
        s = min(1.0, max_side / max(h, w))
        if s < 1.0:
            image = np.asarray(Image.fromarray(image).resize((round(w * s), round(h * s)), Image.BILINEAR))
            boxes = boxes * s
        items.append((image, boxes.astype(np.float32), labels.astype(np.int64)))
    return items


def box_sizes(items, size: int, stretch: bool = False) -> np.ndarray:
    """Every box's (w, h) as it appears after letterboxing (or stretching) to ``size``."""
    if stretch:
        return np.concatenate([(b[:, 2:] - b[:, :2]) * size / np.array(im.shape[1::-1], np.float32)
                               for im, b, _ in items])
    return np.concatenate([(b[:, 2:] - b[:, :2]) * size / max(im.shape[:2]) for im, b, _ in items])


class AugmentedSet(torch.utils.data.Dataset):
    """Training samples with augmentation; sample i of epoch e always gets the same random draw
    (its RNG is seeded by seed, epoch and index), so results do not depend on loader workers."""

    def __init__(self, items, size: int, seed: int, stretch: bool = False):
        self.items, self.size, self.seed, self.epoch = items, size, seed, 0
        self.stretch = stretch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        image, boxes, labels = self.items[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        img, b, lab = augment(image, boxes, labels, self.size, rng, self.stretch)
        cxcywh = np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], axis=1)
        return torch.from_numpy(img), torch.from_numpy(np.concatenate([lab[:, None], cxcywh], 1).astype(np.float32))


def collate(samples) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC images -> float NCHW in [0, 1]; targets get their image index in column 0."""
    x = torch.stack([s[0] for s in samples]).permute(0, 3, 1, 2).float().div_(255)
    t = [torch.cat([torch.full((len(s[1]), 1), float(i)), s[1]], 1) for i, s in enumerate(samples)]
    return x, torch.cat(t) if t else torch.zeros((0, 6))


def _param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(model: Detector, dataset: CocoDataset, out: Path, settings: TrainSettings, name: str,
          class_names: list[str] | None = None, resume: bool = False, fit: bool = True) -> Path:
    torch.manual_seed(settings.seed)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    _check_data(dataset, model)
    size = input_size_of(model)
    stretch = resize_of(model) == "stretch"
    items = load_training_images(dataset, max_side=round(size * 1.3))
    if fit:
        model = _with_fitted_anchors(model, items, size, stretch, settings.seed)
    device = torch.device(settings.device)
    model.to(device)
    loss_fn = YoloLoss(model.head)
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.999))
    ema = ModelEMA(model, settings.ema_decay)
    steps_per_epoch = max(1, len(items) // settings.batch)
    start_epoch, history = 0, []
    state_path = out.with_suffix(".resume.safetensors")
    if resume and state_path.is_file():
        start_epoch, history = _restore(state_path, model, ema, optimizer)
        tqdm.write(f"resuming from {state_path} at epoch {start_epoch + 1}", file=sys.stderr)
    names = class_names or list(dataset.class_names)
    samples = AugmentedSet(items, size, settings.seed, stretch)
    t0 = time.time()
    model.train()
    for epoch in range(start_epoch, settings.epochs):
        samples.epoch = epoch
        running = _train_epoch(model, samples, loss_fn, optimizer, ema, settings, epoch, steps_per_epoch, device)
        history.append({"epoch": epoch + 1, "minutes": round((time.time() - t0) / 60, 2),
                        **{k: round(v, 5) for k, v in running.items()}})
        _save_state(state_path, model, ema, optimizer, epoch + 1, history)
        # The EMA weights so far, as a usable checkpoint: an interrupted run still leaves a model.
        save_checkpoint(out, ema.module, describe(ema.module, names, {"history": history, "partial": True}, name=name))
        if settings.stop_after is not None and epoch + 1 >= settings.stop_after and epoch + 1 < settings.epochs:
            tqdm.write(f"stopping after epoch {epoch + 1} as asked; continue with --resume", file=sys.stderr)
            return out
    minutes = (time.time() - t0) / 60
    training = {
        "data": str(dataset.annotations_path), "images": len(items), "settings": asdict(settings), "history": history,
        "train_minutes": round(minutes, 1), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    ema.module.cpu()
    save_checkpoint(out, ema.module, describe(ema.module, names, training, name=name))
    return out


def _check_data(dataset: CocoDataset, model: Detector) -> None:
    if len(dataset) == 0:
        raise EdgeCSPError(f"training set {dataset.annotations_path} has no images")
    if dataset.num_classes != model.config.num_classes:
        raise EdgeCSPError(
            f"the data set has {dataset.num_classes} classes but the model was built for {model.config.num_classes}")


def _with_fitted_anchors(model: Detector, items, size: int, stretch: bool, seed: int) -> Detector:
    """A fresh model of the same config with anchors fitted (k-means on IoU) to the data's boxes."""
    wh = box_sizes(items, size, stretch)
    anchors = fit_anchors(wh, k=len(model.config.anchors), seed=seed)
    tqdm.write(f"anchors fitted to the data (mean best IoU {anchor_fitness(wh, anchors):.3f}): {anchors}",
               file=sys.stderr)
    torch.manual_seed(seed)
    return type(model)(model.config.with_overrides(anchors=tuple(anchors)))


def learning_rate(settings: TrainSettings, it: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 2% of the base rate."""
    warmup = min(1.0, (it + 1) / settings.warmup_iters)
    return settings.lr * warmup * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * it / total_steps)))


def _train_epoch(model, samples: AugmentedSet, loss_fn, optimizer, ema, settings: TrainSettings, epoch: int,
                 steps_per_epoch: int, device) -> dict[str, float]:
    """One pass over the data; returns the smoothed loss parts."""
    loader = torch.utils.data.DataLoader(
        samples, batch_size=settings.batch, shuffle=True, drop_last=True, collate_fn=collate,
        num_workers=settings.workers, generator=torch.Generator().manual_seed(settings.seed * 1000 + epoch),
        persistent_workers=False)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch")
    total_steps = steps_per_epoch * settings.epochs
    running: dict[str, float] = {}
    for step, (x, targets) in enumerate(bar):
        lr = learning_rate(settings, epoch * steps_per_epoch + step, total_steps)
        for g in optimizer.param_groups:
            g["lr"] = lr
        loss, parts = loss_fn(model(x.to(device, non_blocking=True)), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        ema.update(model)
        running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in parts.items()}
        bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()} | {"lr": f"{lr:.1e}"})
    return running


def _save_state(path: Path, model, ema, optimizer, epoch: int, history: list) -> None:
    extra = {f"train.ema.{k}": v for k, v in ema.module.state_dict().items()}
    for i, st in optimizer.state_dict()["state"].items():
        for k, v in st.items():
            extra[f"train.opt.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    meta = {"format": "edgecsp-checkpoint/1", "resume": True, "epoch": epoch, "history": history,
            "ema_updates": ema.updates, "edgecsp_version": __version__,
            "architecture": architecture_of(model)}
    save_checkpoint(path, model, meta, extra)


def _restore(path: Path, model, ema, optimizer) -> tuple[int, list]:
    tensors, meta = read_checkpoint(path)
    device = next(model.parameters()).device
    tensors = {k: v.to(device) for k, v in tensors.items()}
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("train.")})
    ema.module.load_state_dict({k[len("train.ema."):]: v for k, v in tensors.items() if k.startswith("train.ema.")})
    ema.updates = meta["ema_updates"]
    opt_state = optimizer.state_dict()
    for key, v in tensors.items():
        if key.startswith("train.opt."):
            _, _, i, name = key.split(".", 3)
            opt_state["state"].setdefault(int(i), {})[name] = v
    optimizer.load_state_dict(opt_state)
    return int(meta["epoch"]), list(meta["history"])
