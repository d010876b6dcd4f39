"""docs/results.md's tables of §1b, §1c, §2b, §4 and §5 are what experiments/*'s scripts make of the committed
study tables: every table of those sections, verbatim, and each script's tables.md as committed."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"


def script(path: str):
    """An experiments/ script as a module (they are run as files, not imported as a package)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drift() -> str:
    module = script("experiments/paper/drift_report.py")
    return "\n".join(module.compose(module.SWEEPS)[0]) + "\n"


SECTIONS = {  # the doc's section: the study whose tables.md holds its tables, and how they are generated
    "1b": ("fmnist-epoch", lambda: script("experiments/paper/epoch_tables.py").tables()),
    "1c": ("fmnist-epoch-drift", drift),
    "2b": ("vit-cuts", lambda: script("experiments/beyond/vit_tables.py").tables()),
    "4": ("many-clients", lambda: script("experiments/beyond/clients_tables.py").tables()),
    "5": ("phone-time", lambda: script("experiments/edge/time_tables.py").tables()),
}


def section(doc: str, name: str) -> str:
    """The text of section ``### {name}.`` up to the next heading of its level or above."""
    match = re.search(rf"^### {re.escape(name)}\. .*?(?=^##? |^### )", doc, re.M | re.S)
    assert match, f"docs/results.md has no section {name}"
    return match.group(0)


def table_blocks(text: str) -> list[str]:
    """Each markdown table of ``text`` (its consecutive lines that start with '|'), as one string."""
    return re.findall(r"(?:^\|.*\n)+", text, re.M)


@pytest.mark.parametrize("name", list(SECTIONS), ids=[f"section-{n}" for n in SECTIONS])
def test_every_table_of_the_section_is_generated_from_the_committed_tables(name):
    study, generate = SECTIONS[name]
    generated = generate()
    assert generated == (ROOT / "docs" / "results" / study / "tables.md").read_text(), (
        f"docs/results/{study}/tables.md is not what its script writes now: rerun it"
    )
    blocks = table_blocks(section(DOC.read_text(), name))
    assert blocks, f"§{name} has no table"
    whole, rows = table_blocks(generated), set(generated.splitlines())
    for block in blocks:
        missing = [line for line in block.splitlines() if line not in rows]
        assert not missing, f"§{name}: rows not generated from the study's tables: {missing[:3]}"
        # a generated table in part (rows the script added since left out of the doc) is not the table
        left_out = [
            g.splitlines()[len(block.splitlines())] for g in whole if g.startswith(block) and g != block
        ]
        assert block in whole, f"§{name}: a table without the rows its script writes now: {left_out[:1]}"
