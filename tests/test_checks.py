"""The validation floor: one module of checks at the bottom of the package, and an import graph
in which lower floors never import upper ones."""

from __future__ import annotations

import ast
import pathlib

import pytest

from seqarch import checks
from seqarch.budget import match_budget
from seqarch.models import ModelConfig

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "seqarch"


def _seqarch_imports(path: pathlib.Path) -> set[str]:
    """The seqarch subpackages/modules ``path`` imports, resolved from relative imports."""
    module = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = module[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = (*base, *(node.module.split(".") if node.module else ()))
            else:
                target = tuple((node.module or "").split("."))
            if target and target[0] == "seqarch":
                found.add(".".join(target[:2]) if len(target) > 1 else "seqarch")
                if node.module is None or len(target) == 1:
                    found.update(f"seqarch.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("seqarch"))
    return found


@pytest.mark.parametrize("floor", ["checks.py", "precision.py"])
def test_the_ground_floor_imports_nothing_of_seqarch(floor):
    assert _seqarch_imports(PACKAGE / floor) == set()


def test_modules_never_import_mixers():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(i for i in _seqarch_imports(path) if i.startswith("seqarch.mixers"))
        for path in (PACKAGE / "modules").glob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize(("call", "message"), [
    (lambda: checks.check_positive_int("d_state", 0), "d_state: expected a positive integer, got 0"),
    (lambda: checks.check_positive_int("d_state", True), "d_state: expected a positive integer, got True"),
    (lambda: checks.check_even_positive_int("d_state", 7, "conjugate pairs"),
     "d_state: expected an even positive integer (conjugate pairs), got 7"),
    (lambda: checks.check_int("data.seq_len", 3, minimum=4, maximum=8),
     "data.seq_len: expected an integer in [4, 8], got 3"),
    (lambda: checks.check_int("data.seq_len", "8"), "data.seq_len: expected an integer, got '8'"),
    (lambda: checks.check_real("lr", float("nan"), low=0.0), "lr: expected a number in (0.0, inf), got nan"),
    (lambda: checks.check_dropout(1.0), "dropout: expected a number in [0, 1), got 1.0"),
    (lambda: checks.check_choice("init", "x", ("lin", "inv")), "init: expected one of ['lin', 'inv'], got 'x'"),
    (lambda: checks.check_bool("causal", 1), "causal: expected a bool, got 1"),
    (lambda: checks.check_range_pair("filter_decay", (2, 1), what="(fast, slow)"),
     "filter_decay: expected a pair (fast, slow) of positive numbers with fast <= slow, got (2, 1)"),
    (lambda: checks.check_odd_int("filter_emb_dim", 4, minimum=3),
     "filter_emb_dim: expected an odd integer >= 3, got 4"),
    (lambda: checks.check_divides("n_heads", 3, "d_model", 16), "n_heads: expected a divisor of d_model=16, got 3"),
])
def test_checks_name_the_argument_the_expectation_and_what_came(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


def test_checks_return_the_value():
    assert checks.check_real("lr", 3) == 3.0 and isinstance(checks.check_real("lr", 3), float)
    assert checks.check_range_pair("decay", [0.3, 1.5]) == (0.3, 1.5)
    assert checks.check_int("n", 5, minimum=1) == 5


def test_budget_surfaces_a_bad_option_with_its_own_message():
    config = ModelConfig(vocab_size=64, d_model=32, n_layers=2, mixer="s4d", mixer_options={"d_state": 7})
    with pytest.raises(ValueError, match="d_state: expected an even") as error:
        match_budget(config, params=50_000)
    assert "no width" in str(error.value)  # says what the solver was doing, and the options' own reason
