import subprocess
import sys

import conta_kit

API = [
    "BoundaryFScore", "COCOSegmentation", "ConfoundedScenes", "ConfusionMatrix", "ContextLeakage", "DataCfg",
    "Run", "RunCfg", "SceneOptions", "VOCSegmentation", "collate", "multilabel_map", "ood_false_positive_rate",
    "resolve_device", "scene_statistics", "write_json",
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
