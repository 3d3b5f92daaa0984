import urllib.error

import pytest
import torch
import torchvision

from conta_kit.models import build_classifier, build_segmenter, load_checkpoint
from conta_kit.train import save_checkpoint


def test_tiny_classifier_shapes():
    m = build_classifier("tiny", 5)
    x = torch.rand(2, 3, 64, 48)
    assert m.features(x).shape == (2, m.backbone.out_channels, 8, 6)
    assert m(x).shape == (2, 5)
    assert m.head.bias is None and m.head.kernel_size == (1, 1)


def test_tiny_output_stride_4_doubles_the_grid_and_keeps_the_receptive_field():
    from conta_kit.config import RunCfg
    from conta_kit.methods.conta.steps import build_round_classifier, feature_grid

    m8, m4 = build_classifier("tiny", 5), build_classifier("tiny", 5, output_stride=4)
    x = torch.rand(2, 3, 64, 48)
    assert m4.features(x).shape == (2, m4.backbone.out_channels, 16, 12)
    assert sum(p.numel() for p in m4.parameters()) == sum(p.numel() for p in m8.parameters())  # same weights
    # the receptive field in image pixels: the gradient of one centre cell reaches as far as at stride 8
    extent = []
    for m in (m8, m4):
        img = torch.zeros(1, 3, 64, 64, requires_grad=True)
        f = m.eval().features(img)
        f[0, :, f.shape[-2] // 2, f.shape[-1] // 2].sum().backward()
        rows = img.grad.abs().sum(dim=(0, 1, 3)).nonzero()
        extent.append(int(rows.max() - rows.min()))
    assert abs(extent[0] - extent[1]) <= 4, extent
    cfg = RunCfg.from_params("smoke", output_stride=4)
    # 64 px / 4 (8 x 8 at stride 8)
    assert feature_grid(build_round_classifier(cfg, 5, load_pretrained=False), cfg) == (16, 16)
    with pytest.raises(ValueError, match=r"output_stride must be None or one of \(8, 4\) for backbone 'tiny', got 16"):
        RunCfg.from_params("smoke", output_stride=16)
    with pytest.raises(ValueError, match="output_stride must be one of"):
        build_classifier("tiny", 5, output_stride=2)


def test_tiny_depth_sets_the_receptive_field():
    from conta_kit.config import RunCfg
    from conta_kit.methods.conta.steps import build_round_classifier

    extent = {}
    for depth in (0, 1, 2, 3):
        m = build_classifier("tiny", 5, depth=depth).eval()
        img = torch.zeros(1, 3, 160, 160, requires_grad=True)
        f = m.features(img)
        f[0, :, f.shape[-2] // 2, f.shape[-1] // 2].sum().backward()
        rows = img.grad.abs().sum(dim=(0, 1, 3)).nonzero()
        extent[depth] = int(rows.max() - rows.min()) + 1
    assert extent == {0: 43, 1: 59, 2: 75, 3: 91}, extent
    cfg = RunCfg.from_params("smoke", cls_depth=3)
    assert len(build_round_classifier(cfg, 5, load_pretrained=False).backbone.layer3) == 3
    with pytest.raises(ValueError, match="cls_depth must be >= 1, and other than 2 only for backbone 'tiny', got 0"):
        RunCfg.from_params("smoke", cls_depth=0)
    with pytest.raises(ValueError, match="depth 3 exists only for the 'tiny' backbone"):
        build_classifier("resnet18", 5, depth=3)


def test_pooling_turns_the_cam_map_into_logits():
    from conta_kit.config import RunCfg
    from conta_kit.data.splits import load_splits
    from conta_kit.methods.conta.steps import build_round_classifier, feature_grid, ground_truth_ingredients
    from conta_kit.methods.wood import pooled_features
    from conta_kit.models import pool_logits

    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64)
    gap = build_classifier("tiny", 4).eval()
    with torch.no_grad():
        gap.head.weight.mul_(1000.0)  # class scores of order 1 (an untrained head's are about 1e-3)
        f = gap.features(x)
        cam = torch.nn.functional.conv2d(f, gap.head.weight).flatten(2)  # the CAM map, (B, C, h * w)
        assert torch.equal(gap(x), gap.head(f.mean(dim=(2, 3), keepdim=True)).flatten(1))  # IRNet's order, as before
        logits = {}
        for pooling, r in (("max", 5.0), ("lse", 5.0), ("lse", 1e-2), ("lse", 1e4)):
            m = build_classifier("tiny", 4, pooling=pooling, lse_r=r).eval()
            m.load_state_dict(gap.state_dict())
            logits[pooling, r] = m(x)
    torch.testing.assert_close(logits["max", 5.0], cam.amax(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits["lse", 1e-2], cam.mean(-1), atol=1e-2, rtol=0)
    torch.testing.assert_close(logits["lse", 1e4], cam.amax(-1), atol=1e-3, rtol=0)
    lse, spread = logits["lse", 5.0], cam.amax(-1) - cam.mean(-1)
    assert float(spread.min()) > 0.1
    assert bool((lse > cam.mean(-1) + 0.05 * spread).all() and (lse < cam.amax(-1) - 0.05 * spread).all())
    # max pooling: each logit's gradient reaches the features at one cell only
    m = build_classifier("tiny", 4, pooling="max").eval()
    f = m.features(x).detach().requires_grad_(True)
    pool_logits(m.head, f, "max")[0, 2].backward()
    assert int((f.grad[0].abs().sum(0) > 0).sum()) == 1
    # the option reaches both rounds' classifiers through the run configuration
    cfg = RunCfg.from_params("smoke", cls_pooling="lse", cls_lse_r=2.0, num_train=16, num_val=4)
    base = build_round_classifier(cfg, 4, load_pretrained=False)
    assert (base.pooling, base.lse_r) == ("lse", 2.0)
    splits = {k: v for k, v in load_splits(cfg).items() if k in ("train", "val")}
    conf, x_m = ground_truth_ingredients(cfg, splits, feature_grid(base, cfg))
    conta = build_round_classifier(cfg, splits["train"].num_classes, conf, load_pretrained=False).eval()
    imgs, masks = torch.rand(2, 3, 64, 64), x_m["train"][:2].float() / 255
    with torch.no_grad():
        torch.testing.assert_close(conta(imgs, masks), pool_logits(conta.head, conta.features(imgs, masks), "lse", 2.0))
    with pytest.raises(ValueError, match="W-OoD's terms use the GAP features"):
        pooled_features(conta, imgs, masks)
    with pytest.raises(ValueError, match="cls_pooling must be one of"):
        RunCfg.from_params("smoke", cls_pooling="mean")
    with pytest.raises(ValueError, match="cls_lse_r must be > 0"):
        RunCfg.from_params("smoke", cls_lse_r=0.0)
    with pytest.raises(ValueError, match="finetune='wood' needs cls_pooling='gap'"):
        RunCfg.from_params("smoke", cls_pooling="max", finetune="wood")


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_tiny_padding_mode_hides_the_image_edges(mode):
    from conta_kit.config import RunCfg
    from conta_kit.methods.conta.steps import build_round_classifier

    flat = torch.full((1, 3, 64, 64), 0.3)  # a flat image: only the border can make one cell differ from another
    spread = {}
    for pm in ("zeros", mode):
        torch.manual_seed(0)
        f = build_classifier("tiny", 5, padding_mode=pm).eval().features(flat)
        spread[pm] = float((f - f.mean(dim=(2, 3), keepdim=True)).abs().max() / f.abs().mean())
    assert spread["zeros"] > 1e-2 and spread[mode] < 1e-5, spread
    cfg = RunCfg.from_params("smoke", cls_padding=mode)
    model = build_round_classifier(cfg, 5, load_pretrained=False)
    assert {c.padding_mode for c in model.backbone.modules() if isinstance(c, torch.nn.Conv2d)} == {mode}
    with pytest.raises(ValueError, match="cls_padding must be 'zeros', 'reflect' or 'replicate', got 'circle'"):
        RunCfg.from_params("smoke", cls_padding="circle")
    with pytest.raises(ValueError, match="padding_mode 'reflect' exists only for the 'tiny' backbone"):
        build_classifier("resnet18", 5, padding_mode="reflect")


@pytest.mark.parametrize("os_, size", [(16, 4), (8, 8)])
def test_resnet50_output_stride(os_, size):
    m = build_classifier("resnet50", 20, output_stride=os_)
    assert m.features(torch.rand(1, 3, 64, 64)).shape == (1, 2048, size, size)


def test_resnet18_and_undilated_strides():
    m = build_classifier("resnet18", 3, output_stride=16)
    assert m.features(torch.rand(1, 3, 64, 64)).shape == (1, 512, 4, 4)
    m = build_classifier("resnet50", 3, output_stride=16, dilate=False)  # IRNet: stride dropped, no dilation
    assert m.features(torch.rand(1, 3, 64, 64)).shape == (1, 2048, 4, 4)
    assert m.backbone.layer4[1].conv2.dilation == (1, 1)


def test_irnet_options_keep_module_contract():
    m = build_classifier("resnet18", 3)
    m.train()
    bns = [mod for mod in m.backbone.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert m.training and all(not bn.training for bn in bns)  # frozen statistics, module still in train mode
    m.eval()
    assert not m.training
    assert all(not p.requires_grad for p in m.backbone.stem.parameters())
    m.train()
    m(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in m.backbone.layer1.parameters())  # output of layer2 is detached
    assert all(p.grad is None for p in m.backbone.layer2.parameters())
    assert any(p.grad is not None for p in m.backbone.layer3.parameters())
    groups = m.param_groups()
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0] and groups[1]["params"][0] is m.head.weight


def test_pretrained_from_local_file(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    m = build_classifier("resnet18", 4, pretrained=tmp_path / "r18.pth")
    assert torch.equal(m.backbone.stem[0].weight, ref.conv1.weight)
    assert torch.equal(m.backbone.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match="r50.pth does not fit a resnet18"):
        build_classifier("resnet18", 4, pretrained=tmp_path / "r50.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_classifier("resnet18", 4, pretrained=tmp_path / "nope.pth")


def test_imagenet_offline_error_names_local_file_option(monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"pretrained='/path/to/resnet50-.*\.pth'"):
        build_classifier("resnet50", 20, pretrained="imagenet")


def test_checkpoint_of_another_architecture(tmp_path):
    save_checkpoint(tmp_path / "tiny.pt", build_classifier("tiny", 3))
    with pytest.raises(ValueError, match=r"tiny\.pt does not fit Classifier"):
        load_checkpoint(build_classifier("resnet18", 3), tmp_path / "tiny.pt")
    other = build_classifier("tiny", 3)
    load_checkpoint(other, tmp_path / "tiny.pt")


def test_checkpoint_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported"):
        load_checkpoint(build_classifier("tiny", 3), tmp_path / "evil.pt")


@pytest.mark.parametrize("name", ["tiny", "deeplabv3_resnet50"])
def test_segmenters(name):
    m = build_segmenter(name, 4).eval()
    with torch.no_grad():
        assert m(torch.rand(1, 3, 48, 40)).shape == (1, 5, 48, 40)


def test_bad_names():
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_classifier("vgg", 3)
    with pytest.raises(ValueError, match="segmenter must be one of"):
        build_segmenter("unet", 3)
