import pytest
import torch

from conta_kit.cam.pseudo import REFINERS, cams_to_labels, cams_to_pseudo_masks


def _cams():
    cams = torch.zeros(1, 3, 2, 4)
    cams[0, 0] = torch.tensor([[0.9, 0.4, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0]])
    cams[0, 1] = torch.tensor([[0.5, 0.6, 0.0, 0.0], [0.9, 0.9, 0.9, 0.9]])  # class 1 absent from the image
    cams[0, 2] = torch.tensor([[0.0, 0.0, 0.1, 0.04], [0.2, 0.0, 0.0, 0.0]])
    return cams, torch.tensor([[1.0, 0.0, 1.0]])


def test_single_threshold_golden():
    cams, labels = _cams()
    out = cams_to_pseudo_masks(cams, labels, bg_threshold=0.15)
    assert out.tolist() == [[[1, 1, 1, 0], [3, 0, 0, 0]]]
    assert not (out == 2).any(), "an absent class never appears"


def test_confident_regions_golden():
    cams, labels = _cams()
    out = cams_to_pseudo_masks(cams, labels, conf_fg=0.30, conf_bg=0.05)
    # fg run (bg 0.30): [[1,1,0,0],[0,0,0,0]]; bg run (bg 0.05): [[1,1,1,0],[3,0,0,0]]
    assert out.tolist() == [[[1, 1, 255, 0], [255, 0, 0, 0]]]


def test_argmax_labels_never_absent_class():
    cams = torch.rand(4, 5, 8, 8)
    labels = (torch.rand(4, 5) > 0.5).float()
    out = cams_to_labels(cams, labels, 0.0)
    for i in range(4):
        allowed = {0} | {k + 1 for k in torch.nonzero(labels[i]).flatten().tolist()}
        assert set(out[i].unique().tolist()) <= allowed


def test_bad_input():
    cams, labels = _cams()
    with pytest.raises(ValueError, match="labels must be"):
        cams_to_pseudo_masks(cams, torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"cams must be \(B, C, H, W\)"):
        cams_to_pseudo_masks(cams[0], labels)
    with pytest.raises(ValueError, match="both conf_fg and conf_bg"):
        cams_to_pseudo_masks(cams, labels, conf_fg=0.3)
    with pytest.raises(ValueError, match="refine must be one of"):
        cams_to_pseudo_masks(cams, labels, refine="bilateral", images=torch.rand(1, 3, 2, 4))


def test_crf_refinement():
    pytest.importorskip("pydensecrf.densecrf")
    cams, labels = _cams()
    img = torch.rand(1, 3, 2, 4)
    out = cams_to_pseudo_masks(cams, labels, conf_fg=0.3, conf_bg=0.05, refine="crf", images=img)
    assert out.shape == (1, 2, 4) and set(out.unique().tolist()) <= {0, 1, 3, 255}
    assert "crf" in REFINERS


def test_fast_labels_equal_the_argmax_over_a_background_plane():
    from conta_kit.cam.pseudo import foreground_argmax

    cams = torch.rand(3, 4, 9, 7)
    cams[0, :, 0, 0] = 0.2  # ties with the background plane: background wins, as argmax's first index
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    for t in (0.0, 0.2, 0.5, 1.0):
        fg = cams.masked_fill(labels[:, :, None, None] <= 0, float("-inf"))
        ref = torch.cat([torch.full_like(cams[:, :1], t), fg], 1).argmax(1)  # background plane t, absent -inf
        assert torch.equal(cams_to_labels(cams, labels, t), ref)
        score, ids = foreground_argmax(cams, labels)
        assert torch.equal(torch.where(score > t, ids, torch.zeros_like(ids)), ref)


def test_crf_snaps_a_blurred_cam_to_the_colour_edge():
    pytest.importorskip("pydensecrf.densecrf")
    h, w = 32, 32
    img = torch.zeros(1, 3, h, w)
    img[0, 0, :, :12] = 1.0  # red object on the left, dark background: the true edge is at column 12
    gt = torch.zeros(1, h, w, dtype=torch.long)
    gt[0, :, :12] = 1
    ramp = (1.0 - torch.arange(w) / 26.0).clamp_min(0).expand(h, w)  # a CAM that fades out 6 px past the edge
    cams = ramp[None, None].clone()
    labels = torch.ones(1, 1)
    plain = cams_to_labels(cams, labels, 0.3)
    refined = cams_to_labels(cams, labels, 0.3, refine="crf", images=img)

    def iou(pred):
        inter = ((pred == 1) & (gt == 1)).sum()
        return float(inter / ((pred == 1) | (gt == 1)).sum())

    assert iou(refined) > iou(plain) + 0.1
