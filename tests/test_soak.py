"""python -m bench soak in its quick mode, against swishnet serve serving the tiny model: every phase runs
and the service comes through it as the README says. Counts and outcomes are checked, never a timing."""

from __future__ import annotations

import pytest

from bench import soak
from bench.common import Options

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def result(tiny_model_path):
    return soak.run(Options(quick=True), tiny_model_path)


def test_every_bad_input_gets_its_answer(result):
    assert result["bad_inputs"] == dict.fromkeys(soak.BAD_INPUTS, True)


def test_long_stream_churn_and_uploads(result):
    stream = result["long_stream"]
    assert stream["close_code"] == 1000 and stream["in_order"] and "error" not in stream
    assert stream["labels"] >= stream["expected_labels"]
    size = soak.QUICK
    assert sum(result["churn"].values()) == size.cycles
    assert result["clips"]["statuses"] == {"200": size.clips}
    assert result["long_uploads"]["statuses"] == {"200": size.long_uploads}
    assert set(result["burst"]["statuses"]) <= {"200", "503"} and result["burst"]["retry_after_on_every_503"]
    flood = result["flood"]
    assert set(flood) <= {"label", "closed 1013"} and sum(flood.values()) == size.max_streams + size.flood
    assert flood["closed 1013"] >= size.flood


def test_no_internal_error_and_a_clean_sigterm(result):
    assert "error_1011" not in result["stream_outcomes"]
    assert result["stream_outcomes"]["slow_client"] >= 1
    stopped = result["sigterm"]
    assert stopped["exit_status"] == 0 and stopped["reader_close_code"] == 1012 and stopped["reader_got_error_event"]
    assert not stopped["deadline_hit"] and stopped["tracebacks"] == 0 and stopped["internal_errors_1011"] == 0


def test_files_come_back(result):
    assert result["after"]["fds"] == result["before"]["fds"]
    assert result["after"]["rss_mib"] <= result["after"]["peak_rss_mib"]
