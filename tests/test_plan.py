"""The pod planner: a tiny variant compiled for small TPU topologies by libtpu (no TPU needed), its JSON and table,
the not-fit verdict, and the one-line errors."""

import json

import jax
import numpy as np
import pytest

from efficientnetv2_jax import cli, plan
from efficientnetv2_jax.main import load_config
from efficientnetv2_jax.train.program import build_model

TINY = ["--config.model.width=0.25", "--config.model.depth=0.1", "--config.eval_batch_size=64",
        "--config.eval_image_size=32", "--config.progressive.base_image_size=32"]
STAGE_KEYS = {"image_size", "per_device_batch", "steps", "hbm_gib", "fits", "flops_per_device", "collective_bytes",
              "largest_collective_bytes", "estimated_step_seconds", "estimated_images_per_sec_per_chip",
              "estimated_hours"}


def run_plan(capsys, *args) -> tuple[int, str, str]:
    code = cli.run(plan.main, ["--config=configs/imagenet1k.py:b0", *TINY, *args],
                   usage_errors=(cli.UsageError, ValueError, FileNotFoundError))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def two_stage_plan(tmp_path_factory):
    """b0 (tiny) in two stages, 32 -> 64 px, batch 64 on a v3-8: 8 devices of 16 GiB, 8 examples each."""
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    with pytest.MonkeyPatch.context() as patch:
        out = []
        patch.setattr("builtins.print", lambda *a, **k: out.append(" ".join(map(str, a))))
        code = cli.run(plan.main, ["--config=configs/imagenet1k.py:b0", *TINY, "--config.batch_size=64",
                                   "--config.progressive.num_stages=2", "--config.progressive.train_image_size=64",
                                   "--accelerator-type=v3-8", f"--json={path}"])
    assert code == 0, out
    return json.loads(path.read_text()), "\n".join(out)


def test_json_has_the_documented_fields_per_stage_and_eval(two_stage_plan):
    result, _ = two_stage_plan
    assert {"accelerator_type", "devices", "hbm_capacity_gib", "dtype", "estimated_hours", "estimated_chip_hours",
            "stages", "eval"} <= set(result)
    assert (result["accelerator_type"], result["devices"], result["hbm_capacity_gib"]) == ("v3-8", 8, 16)
    assert result["dtype"] == "bfloat16"  # 'auto' on a TPU slice.
    assert [s["image_size"] for s in result["stages"]] == [48, 64]
    for entry in result["stages"]:
        assert STAGE_KEYS <= set(entry) and set(entry["hbm_gib"]) == {"state", "temporaries", "batch", "total"}
    assert STAGE_KEYS - {"steps", "estimated_hours"} <= set(result["eval"])
    assert result["estimated_hours"] == pytest.approx(sum(s["estimated_hours"] for s in result["stages"]))
    assert result["estimated_chip_hours"] == pytest.approx(result["estimated_hours"] * 4)  # v3-8: 4 chips.


def test_memory_and_flops_grow_with_the_image_and_the_batch_splits_per_device(two_stage_plan):
    result, _ = two_stage_plan
    small, large = result["stages"]
    assert all(s["fits"] and s["per_device_batch"] == 64 // 8 for s in result["stages"])
    assert large["hbm_gib"]["total"] > small["hbm_gib"]["total"]
    assert large["hbm_gib"]["batch"] == pytest.approx(small["hbm_gib"]["batch"] * (64 / 48) ** 2, rel=0.05)
    assert large["flops_per_device"] > 1.5 * small["flops_per_device"]
    assert large["estimated_step_seconds"] > small["estimated_step_seconds"] > 0
    assert small["steps"] + large["steps"] == int(350 * 1_256_144 / 64)


def test_gradients_are_all_reduced_across_devices(two_stage_plan):
    result, _ = two_stage_plan
    config = load_config("configs/imagenet1k.py:b0", TINY)
    params = jax.eval_shape(lambda: build_model(config, 1000).init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)),
                                                                  train=False))["params"]
    num_params = sum(x.size for x in jax.tree.leaves(params))
    for stage in result["stages"]:
        # Every gradient at least once: 2 bytes each at least, as XLA sums the bf16 gradients of the bf16 convs
        # across devices before their conversion to float32.
        assert stage["collective_bytes"]["all-reduce"] >= 2 * num_params
        assert "all-gather" not in stage["collective_bytes"]


def test_table_rows_and_totals_are_printed(two_stage_plan):
    _, out = two_stage_plan
    assert "efficientnetv2-b0 on v3-8 (v3:2x2: 8 devices, 4 chips, 16 GiB HBM per device)" in out
    for row in ("stage 1", "stage 2", "eval", "all-reduce MB", "est. step ms"):
        assert row in out
    assert "Total, compiler estimate:" in out and "not measurements" in out


def test_a_negative_compiler_time_is_no_estimate_not_a_duration(capsys, tmp_path):
    path = tmp_path / "plan.json"  # libtpu 0.0.42's cost model answers negative times for train steps on a v4.
    code, out, err = run_plan(capsys, "--accelerator-type=v4-8", "--config.batch_size=64",
                              "--config.progressive.num_stages=1", "--config.progressive.train_image_size=32",
                              f"--json={path}")
    assert code == 0, err
    result = json.loads(path.read_text())
    steps = [*result["stages"], result["eval"]]
    assert all(e["estimated_step_seconds"] is None or e["estimated_step_seconds"] > 0 for e in steps)
    assert all((e["estimated_step_seconds"] is None) == (e["compiler_optimal_seconds"] <= 0) for e in steps)
    if any(e["estimated_step_seconds"] is None for e in steps):
        assert result["estimated_hours"] is None and "No time estimate for " in out and "Total," not in out


def test_a_step_that_cannot_fit_is_a_verdict_not_a_crash(capsys, tmp_path):
    path = tmp_path / "plan.json"  # b0 32x as wide: 0.8 billion parameters, 4 copies of them in the state.
    code, out, err = run_plan(capsys, "--accelerator-type=v2-8", "--config.model.width=32.0", "--config.batch_size=64",
                              "--config.progressive.num_stages=1", "--config.progressive.train_image_size=32",
                              f"--json={path}")
    assert code == 0, err
    assert "Traceback" not in out + err
    stage = json.loads(path.read_text())["stages"][0]
    assert not stage["fits"] and stage["hbm_gib"]["total"] > 8 and stage["hbm_gib"]["state"] > 8
    assert "Stage 1 (32 px) does NOT fit: needs" in out and "of 8 GiB per device" in out
    assert "--config.model.remat=true" in out and "--config.shard_state=data" in out


def test_bad_inputs_are_one_line_errors_with_exit_code_2(capsys, monkeypatch):
    code, _, err = run_plan(capsys, "--accelerator-type=v3-33")
    assert code == 2 and err.count("\n") == 1 and "v3 sizes count TensorCores" in err and "v5litepod-N" in err
    code, _, err = run_plan(capsys, "--accelerator-type=tpu9-8")
    assert code == 2 and "unknown TPU generation" in err and "Valid types" in err
    code, _, err = run_plan(capsys, "--accelerator-type=v3-8", "--stages=7")
    assert code == 2 and "stages 1-4" in err
    code, _, err = run_plan(capsys, "--accelerator-type=v3-8", "--config.batch_sise=8")
    assert code == 2 and "batch_sise" in err
    monkeypatch.setattr(plan, "libtpu_available", lambda: False)
    code, _, err = run_plan(capsys, "--accelerator-type=v3-8")
    assert code == 2 and err.strip() == ("error: the TPU compiler is not installed: pip install "
                                         "'efficientnetv2_jax[tpu]' (or pip install 'jax[tpu]==0.10.2')")
