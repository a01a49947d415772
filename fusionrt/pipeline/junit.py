"""JUnit XML with one test case per gate, so CI systems show the parity and accuracy gates as tests."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from fusionrt.io import atomic_write_bytes
from fusionrt.pipeline.result import Gate


def write_junit(path: str | Path, gates: Sequence[Gate], suite: str = "fusionrt pipeline") -> Path:
    """Write ``gates`` as a JUnit test suite (failed gates as failures, gates never reached as skipped)."""
    failures = sum(1 for g in gates if g.status == "failed")
    skipped = sum(1 for g in gates if g.status == "skipped")
    root = ET.Element("testsuite", name=suite, tests=str(len(gates)), failures=str(failures),
                      skipped=str(skipped), time=f"{sum(g.seconds for g in gates):.3f}")
    for gate in gates:
        case = ET.SubElement(root, "testcase", classname=f"fusionrt.pipeline.{gate.stage}", name=gate.name,
                             time=f"{gate.seconds:.3f}")
        if gate.status == "failed":
            ET.SubElement(case, "failure", message=gate.message[:500]).text = gate.details or gate.message
        elif gate.status == "skipped":
            ET.SubElement(case, "skipped", message=gate.message[:500])
        elif gate.details:
            ET.SubElement(case, "system-out").text = gate.details
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return atomic_write_bytes(path, data)
