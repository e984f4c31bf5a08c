"""benchmarks/speed.py: the limit is a plain image that pays a second attention; every profile's conditions run,
also on the --gpu code path (here on a CPU, with a tiny SDXL-architecture U-Net in fp16); a trajectory's first Use
bakes its rows. benchmarks/bake.py runs."""

from __future__ import annotations

import re

import torch

from benchmarks import bake, speed
from benchmarks.limit import limit_patch
from lib_refdrop.reference.profiles import PROFILES
from tests.support.hostsim import host_attention


def test_the_limit_computes_a_second_attention_and_returns_the_plain_one():
    calls = []

    def attention(q, k, v, extra_options):
        calls.append(q)
        return host_attention(q, k, v, extra_options)

    q, k, v = (torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    options = {"n_heads": 2}
    out = limit_patch(attention)(q, k, v, options)
    assert len(calls) == 2
    assert torch.equal(out, host_attention(q, k, v, options))


def test_the_limits_second_attention_reaches_the_output_so_it_cannot_be_skipped():
    answers = iter([torch.zeros(1, 2, 2), torch.full((1, 2, 2), float("nan"))])
    out = limit_patch(lambda q, k, v, eo: next(answers))(None, None, None, {})
    assert torch.isnan(out).all()


def _rows(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("| `")]


def test_every_profile_runs_every_condition(tmp_path, capsys):
    speed.main(["--size", "8", "--steps", "1", "--rounds", "1", "--ram-gb", "1", "--store", str(tmp_path)])
    out = capsys.readouterr().out
    assert "limit = plain bit for bit: yes" in out
    assert "| sampler thread's CPU / limit's | other threads' CPU, s |" in out  # a loader's work shows apart
    for profile in PROFILES:
        for condition in ("Save", "first Use", "warm Use", "cold Use"):
            assert any(line.startswith(f"| `{profile}` | {condition} |") for line in _rows(out)), (profile, condition)
        assert (tmp_path / f"bench-{profile}").is_dir()
    assert any(line.startswith("| `trajectory` | unbaked Use |") for line in _rows(out))
    baked = dict(re.findall(r"^\| `(\w+)` \| [\d.]+ [MG]B \| [\d.]+, [\d.]+ \| (.+) \|$", out, re.MULTILINE))
    assert baked.keys() == set(PROFILES)
    assert baked["trajectory"].endswith("MB")  # its first Use baked its rows, which its later Uses read
    assert baked["lean"] == "–"


def test_the_gpu_code_path_runs_on_a_cpu(tmp_path, capsys):
    speed.main(["--gpu", "--device", "cpu", "--width", "tiny", "--size", "8", "--steps", "1", "--rounds", "1",
                "--ram-gb", "1", "--profiles", "exact,compact", "--store", str(tmp_path)])
    out = capsys.readouterr().out
    assert "sdxl/tiny U-Net" in out and "float16, cpu" in out
    assert "limit = plain bit for bit: yes" in out
    for profile in ("exact", "compact"):
        for condition in ("Save", "first Use", "warm Use", "cold Use"):
            assert any(line.startswith(f"| `{profile}` | {condition} |") for line in _rows(out)), (profile, condition)


def test_the_bake_benchmark_compares_baked_rows_with_the_trajectory(capsys):
    """benchmarks/bake.py: its later Uses read the baked rows (it stops where one runs the reference pass)."""
    bake.main(["--size", "8", "--steps", "2", "--first", "2", "--later", "2", "--seeds", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 1
    kept = [float(cell.split()[0]) for cell in rows[0].strip("| ").split(" | ")[1:]]
    assert kept[0] == kept[1]  # baked at the Save's steps: the lean Save's rows
    assert 0 < kept[0] < 1
