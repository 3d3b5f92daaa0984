import subprocess
import sys

import conta_kit

API = [
    "BackdoorAdjustment",
    "BaselineCfg",
    "BoundaryFScore",
    "COCOSegmentation",
    "ConfoundedScenes",
    "ConfounderSet",
    "ConfusionMatrix",
    "ContaCfg",
    "ContaClassifier",
    "ContextLeakage",
    "DataCfg",
    "Run",
    "RunCfg",
    "RunLayout",
    "SceneOptions",
    "TrainCfg",
    "VOCSegmentation",
    "build_classifier",
    "build_confounder_set",
    "build_segmenter",
    "cams_to_pseudo_masks",
    "collate",
    "compute_cams",
    "fit",
    "grad_cam",
    "multilabel_map",
    "notebook_setup",
    "ood_false_positive_rate",
    "resolve_device",
    "run_baseline",
    "run_conta",
    "run_seeds",
    "scene_statistics",
    "write_json",
]


def test_public_api_is_pinned():
    assert sorted(conta_kit.__all__) == sorted(API)
    for name in API:
        assert hasattr(conta_kit, name), name


def test_import_has_no_side_effects(tmp_path):
    code = ("import sys, os; import conta_kit; "
            "assert 'matplotlib' not in sys.modules, 'viz must be imported on demand'; "
            "print(sorted(os.listdir('.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]" and out.stderr == ""
