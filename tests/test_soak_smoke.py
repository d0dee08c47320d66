"""The soak harness (bench/soak.py) stays working: a short run of its whole system and every check."""

from bench.soak import main


def test_soak_smoke(capsys):
    status = main(["--concurrency", "20", "--duration", "10", "--tokens", "10", "--interval-ms", "100", "--quiet"])
    report = capsys.readouterr().out
    assert status == 0, report
    assert "unexpected errors: 0" in report and "concurrency leases left: 0" in report, report
    assert "0 missing, 0 unknown, 0 duplicated" in report, report
