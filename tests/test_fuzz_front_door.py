"""The front door under fuzzing (Hypothesis): random mutations of the shipped params.yaml through ``steer run
--check``, and bad arguments to the ``steer`` commands, in this process (tests/fuzzing.py has the mutations, the
property and its oracle).

CI runs a fixed, derandomized budget (``STEER_FUZZ_EXAMPLES`` per test, default 500: under a minute for both on 2
cores); ``bench/fuzz_front_door.py`` is the long run. Every failure the fuzzing found is kept below as an ``@example``, so
it is re-checked on every run whatever the budget.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings

from fuzzing import CliCase, Mutation, check_cli_case, check_params_mutation, cli_cases, cli_workdir, mutations

pytestmark = pytest.mark.slow  # 250 examples a test (bench/fuzz_front_door.py runs more): the full suite's, not the inner loop's

BUDGET = int(os.environ.get("STEER_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=BUDGET, derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_workdir(tmp_path_factory.mktemp("cli") / "work")


S = ("steers", "sentiment")
D = ("steers", "detox")


@FUZZ
@given(m=mutations())
# the two cases of issue #30: an empty prompt list started work; a directory as --params was a traceback
@example(m=Mutation("set", S + ("prompts",), "empty list"))
@example(m=Mutation("params", (), "directory"))
# what the fuzzing found after them (each was accepted, or a traceback, before its fix)
@example(m=Mutation("params", (), "unreadable"))  # OSError traceback
@example(m=Mutation("params", (), "garbage"))  # UnicodeDecodeError traceback
@example(m=Mutation("duplicate", (0,)))  # a steer named twice: YAML kept the second silently
@example(m=Mutation("duplicate", (9,)))  # any key written twice
@example(m=Mutation("path", ("model",), "garbage"))  # a .gguf without a GGUF header
@example(m=Mutation("path", ("model",), "empty"))
@example(m=Mutation("path", S + ("data", "source", "texts"), "directory"))  # only existence was checked
@example(m=Mutation("path", S + ("data", "source", "texts"), "garbage"))
@example(m=Mutation("path", D + ("data", "source", "texts"), "empty"))
@example(m=Mutation("path", D + ("data", "source", "texts"), "unreadable"))
@example(m=Mutation("path", S + ("prompts", 0), "directory"))
@example(m=Mutation("path", S + ("prompts", 1), "garbage"))
@example(m=Mutation("path", S + ("prompts", 2), "empty"))
@example(m=Mutation("path", D + ("prompts", 0), "unreadable"))
@example(m=Mutation("path", ("tracking", "uri"), "directory"))
@example(m=Mutation("path", ("tracking", "uri"), "garbage"))
@example(m=Mutation("path", ("tracking", "uri"), "unreadable"))
@example(m=Mutation("path", ("tracking", "artifact_location"), "garbage"))
@example(m=Mutation("set", ("tracking", "uri"), "string"))  # a folder store: MLflow 3 refuses it mid-run
@example(m=Mutation("delete", ("model",)))  # a default DVC cannot see: dvc.yaml tracks the key (a real run failed)
@example(m=Mutation("delete", ("runtime",)))
@example(m=Mutation("delete", D + ("data", "labels")))  # the classifier's labels no longer mapped to values
@example(m=Mutation("delete", S + ("data", "source", "high_label")))
@example(m=Mutation("delete", S + ("data", "labels", "positive")))
@example(m=Mutation("set", D + ("gate", "min_margin"), "-inf"))  # NaN / inf passed every bound
@example(m=Mutation("set", S + ("evaluate", "strengths", 1), "nan"))
@example(m=Mutation("delete", D + ("evaluate", "actadd_strengths", 0)))  # ActAdd with no strength
@example(m=Mutation("set", S + ("evaluate", "actadd_strengths"), "empty list"))
@example(m=Mutation("set", S + ("prompts", 1, "name"), "empty string"))
@example(m=Mutation("set", S + ("data", "source", "texts", "prompts", "topics", 0), "empty string"))
@example(m=Mutation("set", S + ("data", "source", "texts", "prompts", "topics", 0), "string"))  # unknown topic
@example(m=Mutation("set", ("runtime", "seed"), "negative"))  # numpy refuses a negative seed mid-run
@example(m=Mutation("set", ("runtime", "seed"), "huge int"))
@example(m=Mutation("set", S + ("evaluate", "actadd_layer"), "int"))  # beyond the model's 30 layers
@example(m=Mutation("set", S + ("data", "clean", "min_words"), "int"))  # above max_words: no text kept
def test_a_mutated_params_file_is_refused_in_a_few_lines_or_would_run(m: Mutation, base: Path) -> None:
    """Either accepted (and the oracle knows no reason a run of it fails), or exit 2 in a few lines without a
    traceback; nothing written in the project either way."""
    problems = check_params_mutation(m, base)
    assert not problems, "\n".join(problems)


@FUZZ
@given(case=cli_cases())
@example(case=CliCase("deploy", (("__none__", ""),)))  # served forever from a temporary Prefect server
@example(case=CliCase("deploy", (("--cron", "abc"),)))  # wrote .prefect/ before refusing
@example(case=CliCase("generate", (("--top-p", "nan"),)))  # NaN passed min/max
@example(case=CliCase("generate", (("--seed", str(10**30)),)))  # torch refuses it after the model load
@example(case=CliCase("generate", (("--model", "./bad-unreadable.gguf"),)))
@example(case=CliCase("train", (("--threads", str(10**6)),)))  # torch crashes at exit on 10^6 threads
@example(case=CliCase("train", (("--work-dir", "bad-garbage.json"),)))
@example(case=CliCase("train", (("--data", "bad-unreadable.jsonl"),)))  # OSError traceback
@example(case=CliCase("merge", (("--strength", "style=abc"),)))  # refused only after the model load
@example(case=CliCase("evaluate", (("--champion", "bad-garbage.safetensors"),)))  # read after the model load
@example(case=CliCase("explain", (("--model", "./bad-garbage.gguf"),)))
@example(case=CliCase("explain", (("--score", "bogus"),)))
@example(case=CliCase("explain", (("--out", "existing"),)))
def test_a_bad_command_line_is_refused_in_a_few_lines_before_any_model_load(case: CliCase, work: Path) -> None:
    """Exit 2, a few lines (a usage box at most), no traceback, no model loaded, nothing written."""
    problems = check_cli_case(case, work)
    assert not problems, "\n".join(problems)
