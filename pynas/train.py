"""Training a discrete architecture from scratch: ``pynas train``.

The default for CIFAR-10/100 and SVHN is the DARTS evaluation protocol (DARTS
Sec. 3.3 and its public code): C = 36, 20 cells, batch 96, 600 epochs, SGD with
lr 0.025 cosine-annealed to 0, momentum 0.9, weight decay 3e-4, auxiliary head
weighted 0.4, cutout 16, drop-path probability raised linearly to 0.2, gradient
norm clipped at 5. NAS-Bench-201 genotypes train NAS-Bench-201's network with
its own protocol (C = 16, 5 cells per stage, batch 256, 200 epochs, Nesterov SGD
lr 0.1, weight decay 5e-4). The embedded digits get a quick version of the DARTS
protocol. Every value can be overridden.

A run directory holds the config, per-epoch metrics (JSON lines), an atomic
checkpoint after every epoch from which ``--resume`` continues exactly, and
``result.json`` with parameters (M), FLOPs (M multiply-adds) and test accuracy.
``--tensorboard DIR`` writes each epoch's record as TensorBoard scalars too.
"""
import dataclasses
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import DATASETS, DIGITS_TEST_FRACTION, load_dataset, load_digits_dataset, load_image_dataset, loader, split
from .genotype import Genotype, NB201Genotype
from .errors import InputError, NonFiniteError
from .io import (append_jsonl, checkpoint_header, load_checkpoint, load_state, parameter_shapes, read_config,
                 remove_stale_temporaries, save_checkpoint, truncate_jsonl, write_json, write_text)
from .nn import EvalNetwork, NB201Network
from .progress import Progress
from .errors import quoted
from .genotype import GENOTYPES
from .select import parse_genotype
from .select.evaluate import genotype_text
from .tensorboard import TensorBoardLogger

# The protocols' values; None in a TrainConfig means "the protocol's".
DARTS_PROTOCOL = dict(C=36, layers=20, batch_size=96, epochs=600, lr=0.025, lr_min=0.0, momentum=0.9,
                      nesterov=False, weight_decay=3e-4, auxiliary_weight=0.4, cutout=16, drop_path=0.2,
                      grad_clip=5.0)
NB201_PROTOCOL = dict(C=16, layers=5, batch_size=256, epochs=200, lr=0.1, lr_min=0.0, momentum=0.9, nesterov=True,
                      weight_decay=5e-4, auxiliary_weight=0.0, cutout=0, drop_path=0.0, grad_clip=5.0)
# Digits are 8x8: too small for the auxiliary head (it pools 5x5 windows of the 2/3-depth features).
DIGITS_QUICK = dict(C=16, layers=8, batch_size=64, epochs=20, auxiliary_weight=0.0, cutout=0, drop_path=0.1)


@dataclass
class TrainConfig:
    genotype: str = "DARTS_V2"  # a name, a file, or the genotype's text
    dataset: str = "digits"
    data: Optional[str] = None
    download: bool = False
    seed: int = 0
    device: str = "cpu"
    out: Optional[str] = None
    C: Optional[int] = None
    layers: Optional[int] = None
    batch_size: Optional[int] = None
    epochs: Optional[int] = None
    lr: Optional[float] = None
    lr_min: Optional[float] = None
    momentum: Optional[float] = None
    nesterov: Optional[bool] = None
    weight_decay: Optional[float] = None
    auxiliary_weight: Optional[float] = None
    cutout: Optional[int] = None
    drop_path: Optional[float] = None
    grad_clip: Optional[float] = None
    tensorboard: Optional[str] = None  # a TensorBoard log directory beside metrics.jsonl
    workers: int = 0  # processes making the training batches (0: the main process)

    def resolved(self, nb201: bool) -> "TrainConfig":
        """A copy with every unset value taken from the protocol for this dataset and network."""
        protocol = dict(NB201_PROTOCOL if nb201 else DARTS_PROTOCOL)
        if self.dataset == "digits":
            protocol.update(DIGITS_QUICK if not nb201 else dict(C=8, layers=2, batch_size=64, epochs=20))
        values = {k: (protocol[k] if v is None and k in protocol else v) for k, v in dataclasses.asdict(self).items()}
        return TrainConfig(**values)

    def validate(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but no GPU is visible")
        for name in ("C", "layers", "batch_size", "epochs", "cutout", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"--{_flag(name)} must be an integer, got {value!r}")
        for name in ("lr", "lr_min", "momentum", "weight_decay", "auxiliary_weight", "drop_path", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"--{_flag(name)} must be a finite number, got {value!r}")
        for name in ("C", "layers", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "lr_min", "momentum", "weight_decay", "auxiliary_weight", "cutout", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{_flag(name)} must be non-negative, got {getattr(self, name)}")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"--drop-path must be in [0, 1), got {self.drop_path}")
        if self.dataset == "digits" and self.cutout:
            raise ValueError("--cutout applies to the image datasets (cifar10, cifar100, svhn); the embedded "
                             "digits are 8x8 and take no augmentation")
        if self.lr_min > self.lr:
            raise ValueError(f"--lr-min ({self.lr_min}) must not exceed --lr ({self.lr})")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"--workers must be a non-negative integer, got {self.workers!r}")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def read_genotype(text: str) -> Union[Genotype, NB201Genotype]:
    """A DARTS-style genotype (name, file, text or JSON) or a NAS-Bench-201 string (``|op~0|+...``)."""
    if isinstance(text, str) and text in GENOTYPES:
        return GENOTYPES[text]
    content = genotype_text(text)  # a directory or a binary file: InputError naming --genotype
    try:
        if content.strip().startswith("|"):
            return NB201Genotype.parse(content)
        return parse_genotype(content)
    except (ValueError, SyntaxError, TypeError, KeyError, IndexError, OverflowError) as e:
        raise InputError(f"--genotype {quoted(text)} is not a known name, a genotype file or a genotype: {e}") from None


def build_network(cfg: TrainConfig, genotype, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    if isinstance(genotype, NB201Genotype):
        return NB201Network(cfg.C, N=cfg.layers, num_classes=num_classes, genotype=genotype, in_channels=in_channels)
    if cfg.auxiliary_weight > 0:
        # The head sits after the second reduction (features at 1/4 size) and pools 5x5 windows.
        if cfg.layers < 3:
            raise ValueError("--auxiliary-weight > 0 needs --layers >= 3 (the head follows the second reduction)")
        if image_size // 4 < 5:
            raise ValueError(f"--auxiliary-weight > 0 needs images of at least 20x20; {cfg.dataset} has "
                             f"{image_size}x{image_size}: use --auxiliary-weight 0")
    return EvalNetwork(genotype, cfg.C, num_classes, cfg.layers, auxiliary=cfg.auxiliary_weight > 0,
                       in_channels=in_channels)


def count_parameters(model: nn.Module) -> int:
    """Parameters of the network used at test time (DARTS leaves out the auxiliary head)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("auxiliary_head"))


def count_multiply_adds(model: nn.Module, in_channels: int, image_size: int) -> int:
    """Multiply-adds of one test-time forward pass on one image (convolutions and
    linear layers, as NAS papers report "FLOPs"); the auxiliary head is not run in eval mode."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, in_channels, image_size, image_size, device=device))
    model.train(training)
    return counter.get_total_flops() // 2  # the counter counts a multiply-add as two FLOPs


def _logits(output):
    return output[0] if isinstance(output, tuple) else output


def test_accuracy(model: nn.Module, data, batch_size: int, device="cpu"):
    """(mean loss, accuracy) of ``model`` in eval mode over ``data``."""
    training = model.training
    model.eval()
    total, correct, loss = 0, 0, 0.0
    with torch.no_grad():
        for x, y in loader(data, batch_size, 0, 0, shuffle=False, pin_memory=torch.device(device).type == "cuda"):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = _logits(model(x))
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            total += len(y)
    model.train(training)
    return loss / max(total, 1), correct / max(total, 1)


def training_loss(output, y: torch.Tensor, auxiliary_weight: float) -> torch.Tensor:
    """Cross-entropy of the logits plus ``auxiliary_weight`` times that of the auxiliary head's."""
    if isinstance(output, tuple):
        logits, aux = output
        loss = F.cross_entropy(logits, y)
        if aux is not None and auxiliary_weight > 0:
            loss = loss + auxiliary_weight * F.cross_entropy(aux, y)
        return loss
    return F.cross_entropy(output, y)


def load_train_test(cfg: TrainConfig):
    """(train set, test set, DatasetInfo): the official splits, or a fixed 80/20 split of the digits."""
    if cfg.dataset == "digits":
        dataset, info = load_digits_dataset()
        train, test = split(dataset, 1 - DIGITS_TEST_FRACTION, seed=0)
        return train, test, info
    if cfg.data is None:
        raise ValueError(f"--dataset {cfg.dataset} needs --data DIR (and --download to fetch it)")
    train, info = load_dataset(cfg.dataset, cfg.data, cfg.cutout, cfg.download)
    test, _ = load_image_dataset(cfg.dataset, cfg.data, train=False)
    return train, test, info


class TrainRun:
    def __init__(self, cfg: TrainConfig, resume: Optional[str] = None, quiet: bool = False,
                 log_every: Optional[int] = None):
        if resume:
            if not os.path.isdir(resume):
                raise InputError(f"--resume {resume}" + (" is a file; it must name a training run's directory"
                                                          if os.path.exists(resume) else ": no such directory"))
            path = os.path.join(resume, "config.json")
            if not os.path.exists(path):
                raise InputError(f"--resume {resume}: no training run there (config.json missing)")
            cfg = read_config(path, TrainConfig, "--resume")
            cfg.out = resume
        elif cfg.out is not None:
            if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
                raise InputError(f"--out {cfg.out} is a file; it must name a directory for the run")
            if any(os.path.exists(os.path.join(cfg.out, n)) for n in ("config.json", "checkpoint.pt")):
                raise InputError(f"--out {cfg.out} already holds a run: continue it with --resume {cfg.out}, "
                                 f"or choose a new --out directory")
        self.genotype = read_genotype(cfg.genotype)
        cfg.genotype = str(self.genotype)  # the run keeps the genotype itself, not a name or a path
        cfg = cfg.resolved(isinstance(self.genotype, NB201Genotype))
        try:
            cfg.validate()
        except (ValueError, TypeError) as e:
            raise InputError(f"--resume {resume}: config.json: {e}" if resume else str(e)) from None
        self.cfg, self.quiet = cfg, quiet
        self.progress = Progress(quiet=quiet, log_every=log_every)  # a bar on a terminal, else a line per N steps
        # Opened first: a missing tensorboard package stops the run before any work.
        self.tensorboard = TensorBoardLogger(cfg.tensorboard) if cfg.tensorboard else None
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.train_data, self.test_data, self.info = load_train_test(cfg)
        self.model = build_network(cfg, self.genotype, self.info.in_channels, self.info.num_classes,
                                   self.info.image_size).to(cfg.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0)
        # Stepped once per epoch, as in DARTS: epoch e trains at lr_min + (lr - lr_min)(1 + cos(πe/E))/2.
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, cfg.epochs, eta_min=cfg.lr_min)
        self.epoch = 0
        self.out = cfg.out or os.path.join("runs", f"train-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.checkpoint_path = os.path.join(self.out, "checkpoint.pt")
        os.makedirs(self.out, exist_ok=True)
        remove_stale_temporaries(self.out)  # of atomic writes a kill interrupted
        self.params = count_parameters(self.model)
        self.multiply_adds = count_multiply_adds(self.model, self.info.in_channels, self.info.image_size)
        if resume:
            self._load()
        else:
            write_json(os.path.join(self.out, "config.json"), dataclasses.asdict(cfg))
            write_text(os.path.join(self.out, "genotype.txt"), f"{self.genotype}\n")

    # -- checkpoints ----------------------------------------------------------
    def _save(self):
        state = {"epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(),
                 "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}
        if self.cfg.device == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state()
        save_checkpoint(self.checkpoint_path, self._header(), state)

    def _header(self):
        space = "nb201" if isinstance(self.genotype, NB201Genotype) else "darts"
        return checkpoint_header("train", space, "train", parameter_shapes(self.model),
                                 genotype=str(self.genotype), dataset=self.cfg.dataset)

    def _load(self):
        if not os.path.exists(self.checkpoint_path):  # killed before its first epoch ended
            return
        path, header = self.checkpoint_path, self._header()
        state = load_checkpoint(path, "train", {k: header[k] for k in ("space", "method", "genotype", "dataset")},
                                header["shapes"], map_location=self.cfg.device)
        load_state(path, self.model, state.get("model"))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"])
            random.setstate(state["rng"]["python"])
            if "cuda" in state["rng"]:
                torch.cuda.set_rng_state(state["rng"]["cuda"])
            self.epoch = int(state["epoch"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise InputError(f"{path}: its optimiser or random state does not fit this run "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        truncate_jsonl(os.path.join(self.out, "metrics.jsonl"), self.epoch)

    # -- the loop -------------------------------------------------------------
    def _log(self, msg):
        if not self.quiet:
            print(msg, flush=True)

    def drop_path_probability(self) -> float:
        """DARTS raises drop-path linearly: ``drop_path · epoch / epochs`` during epoch ``epoch`` (0-based)."""
        return self.cfg.drop_path * self.epoch / self.cfg.epochs

    def run(self) -> dict:
        cfg = self.cfg
        self._log(f"{self.genotype}\nparameters {self.params / 1e6:.3f} M, FLOPs {self.multiply_adds / 1e6:.2f} M "
                  f"(multiply-adds); {cfg.epochs} epochs, batch {cfg.batch_size}, run directory {self.out}")
        try:
            while self.epoch < cfg.epochs:
                self._epoch()
        except KeyboardInterrupt:
            print(f"\ninterrupted: the last finished epoch ({self.epoch}) is saved; continue with "
                  f"`pynas train --resume {self.out}`", file=sys.stderr)
            raise SystemExit(130)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
        test_loss, test_acc = test_accuracy(self.model, self.test_data, cfg.batch_size, cfg.device)
        result = {"genotype": str(self.genotype), "dataset": cfg.dataset, "epochs": cfg.epochs,
                  "params_M": self.params / 1e6, "flops_M": self.multiply_adds / 1e6,
                  "test_loss": test_loss, "test_acc": test_acc}
        write_json(os.path.join(self.out, "result.json"), result)
        return result

    def _epoch(self):
        cfg, model = self.cfg, self.model
        if isinstance(model, EvalNetwork):
            model.drop_path_prob = self.drop_path_probability()
        lr = self.optimizer.param_groups[0]["lr"]
        start = time.time()
        batches = loader(self.train_data, cfg.batch_size, cfg.seed, self.epoch, workers=cfg.workers,
                         pin_memory=cfg.device == "cuda")
        # Sums stay on the device (float64: the same numbers as summing on the host), read at the epoch's end;
        # the progress display reads its own at most once a second (a terminal) or every --log-every steps.
        loss_sum, correct, seen = 0.0, 0, 0
        model.train()
        with self.progress.epoch(f"epoch {self.epoch + 1}/{cfg.epochs}", len(batches)) as bar:
            for x, y in batches:
                x, y = x.to(cfg.device, non_blocking=True), y.to(cfg.device, non_blocking=True)
                output = model(x)
                loss = training_loss(output, y, cfg.auxiliary_weight)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                hits = (_logits(output).argmax(-1) == y).sum()
                loss_sum = loss_sum + loss.detach().double() * len(y)
                correct = correct + hits
                seen += len(y)
                bar.update(len(y), loss=loss.detach(), acc=hits / len(y))
        loss_sum, correct = float(loss_sum), int(correct)
        epoch_seconds, images_per_second = bar.summary()
        self.scheduler.step()
        test_loss, test_acc = test_accuracy(model, self.test_data, cfg.batch_size, cfg.device)
        self.epoch += 1
        record = {"epoch": self.epoch, "lr": lr, "drop_path": getattr(model, "drop_path_prob", 0.0),
                  "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                  "test_loss": test_loss, "test_acc": test_acc, "seconds": time.time() - start,
                  "epoch_seconds": epoch_seconds, "images_per_second": images_per_second}
        append_jsonl(os.path.join(self.out, "metrics.jsonl"), record)
        if self.tensorboard is not None:
            self.tensorboard.log(record)
        if not math.isfinite(record["train_loss"]):
            raise NonFiniteError(f"epoch {self.epoch}: training loss {record['train_loss']}: the run stops without "
                                 f"saving this epoch (the checkpoint in {self.out} keeps epoch {self.epoch - 1}); "
                                 f"lower --lr, or set --grad-clip")
        self._save()
        self._log(f"epoch {self.epoch}/{cfg.epochs} lr {lr:.5f} train loss {record['train_loss']:.3f} "
                  f"acc {record['train_acc']:.3f} | test loss {test_loss:.3f} acc {test_acc:.4f} "
                  f"({record['seconds']:.1f} s)")

