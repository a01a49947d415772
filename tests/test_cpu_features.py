"""The CPU seam (fusionrt.runtime.cpu): each kind of CI CPU, handed in as /proc/cpuinfo text, drives its own
branch (VNNI factor of the INT8 paper peak, BF16 availability, fingerprint flags) on whatever machine runs this."""

import pytest

from fusionrt.bench.peak import paper_peak
from fusionrt.runtime.auto import machine_fingerprint
from fusionrt.runtime.cpu import parse_cpuinfo, this_cpu


def _cpu(name, flags, mhz="2450.000"):
    return parse_cpuinfo(f"processor\t: 0\nmodel name\t: {name}\ncpu MHz\t\t: {mhz}\nflags\t\t: {flags}\n"
                         f"processor\t: 1\nmodel name\t: {name}\ncpu MHz\t\t: 1500.000\nflags\t\t: {flags}\n")


AVX2_EPYC = _cpu("AMD EPYC 7B12", "fpu sse sse2 avx fma avx2")
BF16_EPYC = _cpu("AMD EPYC 9B14", "fpu avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16")
AMX_XEON = _cpu("Intel(R) Xeon(R) Platinum 8481C", "avx fma avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile "
                "amx_int8")


@pytest.mark.parametrize(("cpu", "bf16", "vnni", "amx", "flags"), [
    (AVX2_EPYC, False, False, False, ["avx2"]),
    (BF16_EPYC, True, True, False, ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]),
    (AMX_XEON, True, True, True, ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                                  "amx_tile"]),
])
def test_each_ci_cpu_reports_its_features(cpu, bf16, vnni, amx, flags):
    assert (cpu.bf16, cpu.vnni, cpu.amx, cpu.decisive_flags) == (bf16, vnni, amx, flags)
    assert cpu.clock_ghz == pytest.approx(2.45) and cpu.clock_source == "cpu MHz in /proc/cpuinfo"
    assert machine_fingerprint(cpu)["cpu_flags"] == flags and machine_fingerprint(cpu)["cpu"] == cpu.name


def test_paper_peak_takes_the_vnni_and_avx512_branches_from_what_the_cpu_reports():
    avx2, bf16 = paper_peak(cores=2, cpu=AVX2_EPYC), paper_peak(cores=2, cpu=BF16_EPYC)
    assert (avx2.fp32_lanes, avx2.vnni, bf16.fp32_lanes, bf16.vnni) == (8, False, 16, True)
    assert avx2.fp32_flops == pytest.approx(2 * 8 * 2 * 2 * 2.45e9)  # cores x lanes x FMA x pipes x clock
    assert avx2.int8_ops == pytest.approx(2 * avx2.fp32_flops)  # no VNNI: 2 products per lane
    assert bf16.int8_ops == pytest.approx(4 * bf16.fp32_flops)  # VNNI: 4 products per lane
    assert any("no VNNI flag" in a for a in avx2.assumptions) and any("VNNI (4" in a for a in bf16.assumptions)
    no_fma = paper_peak(cores=1, cpu=_cpu("old", "sse sse2"))
    assert (no_fma.fp32_lanes, no_fma.fma) == (4, False)


def test_cpufreq_maximum_wins_over_the_current_mhz():
    cpu = parse_cpuinfo("model name\t: X\ncpu MHz\t\t: 1200.0\nflags\t\t: avx2\n", max_freq_khz=3_500_000)
    assert cpu.clock_ghz == pytest.approx(3.5) and cpu.clock_source == "cpuinfo_max_freq"


def test_this_cpu_is_read_once_and_names_itself():
    assert this_cpu() is this_cpu() and this_cpu().name
