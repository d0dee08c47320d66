"""The soak harness (bench/soak.py) stays working: a short run of its whole system, every kind of client
(those closing at the final event, the websocket cancel storm, those that stop reading) and every check."""

from bench.soak import KINDS, main


def test_soak_smoke(capsys):
    # Ten seconds is mostly warm-up for the gateway's memory (its RSS is measured after two): the RSS bound
    # that means something is the full soak's, measured from its first minute on.
    status = main([
        "--concurrency", "20", "--duration", "10", "--tokens", "10", "--interval-ms", "100",
        "--final-share", "0.4", "--ws-share", "0.2", "--stall-share", "0.1", "--stall-seconds", "2",
        "--rss-tolerance", "0.5", "--quiet",
    ])  # fmt: skip
    report = capsys.readouterr().out
    assert status == 0, report
    assert "PASS  every kind of client ran" in report, report
    # The table: one row per kind, its first column the number of clients of that kind.
    rows = {parts[0]: parts[1:] for line in report.splitlines() if (parts := line.split()) and parts[0] in KINDS}
    assert all(int(rows[kind][0]) > 0 for kind in KINDS), report
    assert "unexpected errors: 0" in report and "concurrency leases left: 0" in report, report
    assert "0 missing, 0 unknown, 0 duplicated" in report and "records booked as lost: 0" in report, report
    assert "started markers left (admitted, never recorded): 0" in report, report
