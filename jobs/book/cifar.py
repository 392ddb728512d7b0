"""CIFAR-10 for the reference job: the real data set from its own files, or a learnable stand-in.

- `CIFAR10Folder` reads a folder holding `cifar-10-batches-py` (the python version of the data set:
  `data_batch_1..5` and `test_batch`, pickled dicts of uint8 rows), with the usual augmentation for
  training (random crop with 4 pixels of padding, horizontal flip).
- `SyntheticCIFAR` is made on the fly, with CIFAR-10's shape (3x32x32, 10 classes): each class is a
  smooth random colour pattern, and each image is its class's pattern shifted, rescaled, mixed with
  another class's pattern and covered in noise. Item i depends only on (seed, i), so it is the same
  on every rank and host, and no file is needed; the held-out split is a disjoint range of items.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(3, 1, 1)
STD = torch.tensor((0.2470, 0.2435, 0.2616)).view(3, 1, 1)
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
FOLDER = "cifar-10-batches-py"


def has_cifar(root: str | None) -> bool:
    return bool(root) and (Path(root) / FOLDER / TEST_FILES[0]).is_file()


class CIFAR10Folder(Dataset):
    """One split of CIFAR-10 as uint8 images in memory, normalised (and augmented) per item."""

    def __init__(self, root: str, train: bool) -> None:
        folder = Path(root) / FOLDER
        images, labels = [], []
        for name in TRAIN_FILES if train else TEST_FILES:
            with open(folder / name, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            images.append(torch.as_tensor(batch[b"data"], dtype=torch.uint8).view(-1, 3, 32, 32))
            labels.extend(int(label) for label in batch[b"labels"])
        self.images = torch.cat(images)
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.train = train
        if len(self.images) != len(self.labels):
            raise ValueError(f"{folder}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float().div_(255)
        if self.train:
            image = augment(image)
        return (image - MEAN) / STD, self.labels[index]


def augment(image: torch.Tensor) -> torch.Tensor:
    """Random 32x32 crop of the image padded by 4 pixels, and a horizontal flip half of the time."""
    padded = F.pad(image, (4, 4, 4, 4))
    top, left = torch.randint(0, 9, (2,)).tolist()
    image = padded[:, top:top + 32, left:left + 32]
    return image.flip(-1) if torch.rand(()) < 0.5 else image


class SyntheticCIFAR(Dataset):
    """`size` learnable images of CIFAR-10's shape; `offset` selects a disjoint range (held-out split)."""

    classes = 10

    def __init__(self, size: int, seed: int = 0, offset: int = 0) -> None:
        self.size, self.seed, self.offset = size, seed, offset
        generator = torch.Generator().manual_seed(seed)
        coarse = torch.rand(self.classes, 3, 4, 4, generator=generator) * 2 - 1
        self.patterns = F.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.offset + index + 1)
        label, other = torch.randint(0, self.classes, (2,), generator=g).tolist()
        dy, dx = torch.randint(-4, 5, (2,), generator=g).tolist()
        contrast = 0.3 + 0.8 * torch.rand((), generator=g)
        mix = 0.8 * torch.rand((), generator=g)
        image = contrast * self.patterns[label].roll((dy, dx), dims=(1, 2)) + mix * self.patterns[other]
        image = image + 2.0 * torch.randn(3, 32, 32, generator=g)
        return image, torch.tensor(label)
