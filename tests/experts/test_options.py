"""Every family's typed ``Options`` and its dtype rule: what the shipped profiles and stand-ins use
validates, unknown keys and bad values are refused by key (with the nearest valid name), nothing
heavy is imported to check them, and the dtype a family cannot run is refused before loading."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from natix_miner.config import CONFIG_DIR, DTYPES, ExpertSpec, load_profile
from natix_miner.experts import BUILTIN_FAMILIES, create_expert, options_class, spec_problems
from natix_miner.experts.dtypes import AUTO_MEANINGS, CPU_RULES, DtypeError, check_dtype, dtype_name, rule
from natix_miner.schema import OptionsError, StrictModel
from tests.support.paths import REPO_ROOT

PROFILES = sorted(CONFIG_DIR.glob("*.yaml"))
HEAVY = ("torch", "transformers", "ultralytics", "timm", "vllm", "rfdetr", "onnxruntime", "rapidocr_onnxruntime")


@pytest.mark.parametrize("device", [False, "cpu"])
@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_shipped_profiles_validate_against_every_family(path, device):
    """As written, and as ``--device cpu`` rewrites them (vllm -> hf_vlm, engine options dropped)."""
    prof = load_profile(path, stand_ins=False, device=device)
    problems = {e.name: spec_problems(e) for e in prof.experts}
    assert not any(problems.values()), problems
    for spec in prof.experts:
        create_expert(spec, prof)  # the constructor validates the same way


def _profile_expert(family):
    for path in PROFILES:
        for e in load_profile(path, stand_ins=False, device=False).experts:
            if e.family == family:
                return e
    return None


def test_stand_in_option_overrides_validate():
    """The options the stand-in builder merges into an expert (natix_miner/standins/archs/*.json)
    are options of that family, merged with a shipped expert of the family."""
    checked = 0
    for arch in sorted((Path(REPO_ROOT) / "natix_miner" / "standins" / "archs").glob("*.json")):
        data = json.loads(arch.read_text())
        base = _profile_expert(data["family"])
        for options in (data.get("options"), (data.get("tiny") or {}).get("options"),
                        (data.get("full") or {}).get("options")):
            if not options or base is None:
                continue
            spec = base.model_copy(update={"options": {**base.options, **options}})
            assert spec_problems(spec) == [], (arch.name, options)
            checked += 1
    assert checked >= 3


def test_every_family_declares_documented_typed_options():
    for family in BUILTIN_FAMILIES:
        model = options_class(family)
        assert model is not None and issubclass(model, StrictModel), family
        dtypes, auto, cpu = rule(model)
        assert set(dtypes) <= set(DTYPES) and auto in AUTO_MEANINGS and cpu in CPU_RULES, family
        undocumented = [k for k, f in model.model_fields.items() if not (f.description or "").strip()]
        assert not undocumented, (family, undocumented)


def test_unknown_key_names_the_nearest_valid_one():
    with pytest.raises(OptionsError) as err:
        create_expert(ExpertSpec(name="t", family="timm", options={"decod": "cpu", "nonsense_key": 7}))
    problems = dict(err.value.problems)
    assert problems["options.decod"].startswith("'decod' is not an option of family 'timm'. Did you mean 'decode'?")
    assert "Did you mean" not in problems["options.nonsense_key"]
    assert "Valid: bucket_batches, channels_last" in problems["options.nonsense_key"]
    # nested sections: the valid names of that section
    spec = ExpertSpec(name="v", family="vllm", model="m", options={"engine": {"max_model_lenn": 4096}})
    (key, msg), = spec_problems(spec)
    assert key == "options.engine.max_model_lenn"
    assert "of engine (family 'vllm'). Did you mean 'max_model_len'?" in msg


def test_bad_values_name_the_key_and_the_expected_type():
    spec = ExpertSpec(name="t", family="timm", options={"decode": "bogus", "hw_share": "lots", "image_size": -3})
    problems = dict(spec_problems(spec))
    assert problems["options.decode"] == "Input should be 'gpu', 'cpu' or 'hw' (got 'bogus')"
    assert problems["options.hw_share"].startswith("Input should be a valid number")
    assert problems["options.image_size"].startswith("Input should be greater than 0")
    # a union is one line per key, not one per member type
    (key, msg), = spec_problems(ExpertSpec(name="h", family="hf_classifier", options={"positive_label": 5}))
    assert (key, msg) == ("options.positive_label", "Input should be a valid string, or a valid list (got 5)")
    # rules that span keys are checked up front too
    assert spec_problems(ExpertSpec(name="t", family="timm", options={"cuda_graphs": True, "bucket_batches": False}))


def test_wrapped_experts_are_checked_through_the_wrapper():
    inner = {"family": "timm", "model": "m", "options": {"decode": "bogus"}}
    (key, msg), = spec_problems(ExpertSpec(name="i", family="isolated", options={"inner": inner}))
    assert key == "options" or key == "options.inner"
    assert "inner.options.decode: Input should be 'gpu', 'cpu' or 'hw'" in msg
    (key, msg), = spec_problems(ExpertSpec(name="c", family="chaos", options={"inner": {"model": "m"}}))
    assert "inner.family is required" in msg
    # a plugin family only the child registers is left to the child
    plugin = {"inner": {"family": "only_in_child"}, "families": {"only_in_child": "pkg.mod:Cls"}}
    assert spec_problems(ExpertSpec(name="i", family="isolated", options=plugin)) == []


def test_typed_options_reach_load_unchanged():
    """Defaults are the values load() used before (read from ``o.get(key, default)``)."""
    e = create_expert(ExpertSpec(name="t", family="timm", model="m"))
    o = e.opts
    assert (o.decode, o.hw_share, o.decode_threads, o.num_classes, o.positive_index) == ("gpu", 1.0, 8, 2, 1)
    assert (o.channels_last, o.gpu_decode, o.bucket_batches, o.cuda_graphs, o.compile) == (True, False, True, False, False)
    assert o.compile_mode == "max-autotune-no-cudagraphs" and o.warmup_batches is None
    u = create_expert(ExpertSpec(name="u", family="ultralytics", model="m", options={"classes": {"cone": ["cone"]}}))
    assert (u.opts.imgsz, u.opts.conf, u.opts.iou, u.opts.max_det, u.opts.nms_iou) == (640, 0.05, 0.7, 100, None)
    assert (u.opts.min_score, u.opts.top_k, u.opts.leak) == (0.25, 3, 0.05)
    g = create_expert(ExpertSpec(name="g", family="owlv2", model="m"))
    assert (g.opts.conf, g.opts.max_det, g.opts.nms_iou) == (0.1, 50, 0.5)
    ocr = create_expert(ExpertSpec(name="o", family="ocr"))
    assert (ocr.opts.threshold, ocr.opts.match_probability, ocr.opts.no_match_probability) == (0.8, 0.95, 0.45)


def test_options_and_validation_import_no_model_library():
    """Reading every family's Options and validating a bad profile imports neither torch nor any
    model library (run in a fresh interpreter)."""
    code = f"""
import sys, io, contextlib
from natix_miner.experts import FAMILIES, options_class
from natix_miner.commands.experts import schema
for f in FAMILIES:
    options_class(f); schema(f)
from natix_miner.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    rc = main(["profile", "validate", sys.argv[1]])
assert rc == 1 and "nonsense_key" in err.getvalue(), (rc, err.getvalue())
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""
    bad = CONFIG_DIR / "demo-cpu.yaml"
    import tempfile

    import yaml

    data = yaml.safe_load(bad.read_text())
    data["experts"][0]["options"]["nonsense_key"] = 7
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/bad.yaml"
        with open(path, "w") as fh:
            yaml.safe_dump(data, fh)
        out = subprocess.run([sys.executable, "-c", code, path], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"imported: {out.stdout.strip()}"


# -- the dtype rule ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family, dtype, ok", [
    ("timm", "fp8", False), ("timm", "int8", False), ("timm", "bfloat16", True), ("timm", "auto", True),
    ("hf_classifier", "int8", False), ("dino_head", "fp8", False), ("clip_zeroshot", "float16", True),
    ("ultralytics", "bfloat16", False), ("ultralytics", "float16", True), ("rfdetr", "bfloat16", True),
    ("owlv2", "fp8", False), ("depth", "int8", False),
    ("vllm", "fp8", True), ("vllm", "int8", False), ("hf_vlm", "fp8", False),
    ("ocr", "int8", True), ("openai_vlm", "fp8", True), ("isolated", "fp8", True), ("chaos", "int8", True)])
def test_which_dtypes_each_family_runs(family, dtype, ok):
    problem = check_dtype(dtype, family)
    assert (problem is None) == ok, problem
    if not ok:
        assert problem.startswith(f"dtype {dtype!r} is not supported by family {family!r} (use ")


@pytest.mark.parametrize("family, dtype, device, want", [
    ("timm", "auto", "cuda:0", "float32"), ("timm", "bfloat16", "cuda:0", "bfloat16"), ("timm", "float16", "cpu", "float32"),
    ("hf_classifier", "float16", "cuda", "float16"), ("hf_classifier", "bfloat16", "cpu", "float32"),
    ("ultralytics", "auto", "cuda:1", "float16"), ("hf_detector", "auto", "cuda:0", "bfloat16"),
    ("timm_det", "auto", "cuda:0", "float32"), ("timm_det", "float16", "cuda:0", "float16"),
    ("grounding_dino", "auto", "cuda:0", "float16"), ("depth", "auto", "cpu", "float32"),
    ("hf_vlm", "float16", "cpu", "float32"), ("hf_vlm", "bfloat16", "cpu", "bfloat16"), ("hf_vlm", "auto", "cpu", "auto"),
    ("vllm", "auto", "cuda:0", "auto"), ("vllm", "fp8", "cuda:0", "fp8"), ("vllm", "float16", "cpu", "float16")])
def test_what_each_family_runs_a_dtype_in(family, dtype, device, want):
    """``auto`` keeps its per-family meaning; CPU runs float32 except in the VLM families."""
    assert dtype_name(dtype, device, family) == want


def test_auto_half_follows_the_card(monkeypatch):
    from natix_miner.experts import dtypes

    monkeypatch.setattr(dtypes, "_bf16_supported", lambda device: False)
    assert dtype_name("auto", "cuda:0", "hf_classifier") == "float16"
    monkeypatch.setattr(dtypes, "_bf16_supported", lambda device: True)
    assert dtype_name("auto", "cuda:0", "dino_head") == "bfloat16"
    assert dtype_name("auto", "cpu", "dino_head") == "float32"


def test_resolve_refuses_what_the_family_cannot_run():
    from natix_miner.experts.dtypes import resolve_dtype

    with pytest.raises(DtypeError, match="'fp8' is not supported by family 'timm'"):
        resolve_dtype("fp8", "cuda:0", "timm")
    with pytest.raises(OptionsError, match=r"dtype: dtype 'int8' is not supported by family 'hf_detector'"):
        create_expert(ExpertSpec(name="d", family="hf_detector", model="m", dtype="int8",
                                 options={"classes": {"cone": ["cone"]}}))


def test_families_declare_their_packages_and_model_kind():
    """What preflight and ``experts list`` read (once a table in preflight.py)."""
    from natix_miner.experts import family_packages, model_is_file

    assert family_packages("timm") == ("timm",) and family_packages("ocr") == ("rapidocr_onnxruntime",)
    assert family_packages("owlv2") == family_packages("depth") == family_packages("hf_vlm") == ("transformers",)
    assert family_packages("vllm") == ("vllm",) and family_packages("openai_vlm") == ("aiohttp",)
    assert family_packages("isolated") == family_packages("chaos") == family_packages("not_a_family") == ()
    assert not model_is_file("timm") and not model_is_file("openai_vlm") and model_is_file("ultralytics")


def test_engine_level_option_is_accepted_by_every_family():
    """``require_gpu`` is read by placement (engine/placement.py), whatever the family."""
    for family in BUILTIN_FAMILIES:
        assert "require_gpu" in options_class(family).model_fields, family
    spec = ExpertSpec(name="t", family="timm", device="cuda:0", options={"require_gpu": True})
    assert spec_problems(spec) == [] and create_expert(spec).opts.require_gpu is True
