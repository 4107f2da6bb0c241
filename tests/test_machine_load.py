"""The machine facts a bench records: CPU model and vector extensions, and how busy the cores were."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runtime_py.machine_load import busy_cores, cpu_info, disturbed, load_sample

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse2 avx2 fma f16c avx512f avx512bw avx512_vnni avx512_bf16 sha_ni
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes asimdhp asimddp i8mm bf16 sve
CPU implementer\t: 0x41
"""


def test_cpu_info_reads_the_model_and_the_extensions_that_decide_int8_speed() -> None:
    x86 = cpu_info(X86)
    assert x86["model"] == "AMD EPYC 9B14"
    assert x86["isa"] == ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]
    arm = cpu_info(ARM)
    assert arm["isa"] == ["asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve"]
    assert "avx512_vnni" not in arm["isa"] and "sha_ni" not in x86["isa"]


def test_cpu_info_of_this_machine_names_a_model() -> None:
    info = cpu_info()
    assert info["model"] and isinstance(info["isa"], list)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_busy_cores_sees_a_process_that_holds_a_core() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 5: pass"])
    try:
        busy = busy_cores(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy >= 0.7  # the spinner alone keeps most of a core busy
    assert disturbed({"busy_cores": busy})
    assert not disturbed({"busy_cores": 0.1}) and not disturbed({"busy_cores": None})


def test_load_sample_has_both_fields() -> None:
    sample = load_sample(0.1)
    assert set(sample) == {"loadavg_1m", "busy_cores"}
