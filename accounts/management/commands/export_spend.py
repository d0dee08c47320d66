"""`manage.py export_spend --start YYYY-MM-DD --end YYYY-MM-DD [--team NAME] [--output FILE]`: spend per day,
team, key and model as CSV."""

from datetime import date

from django.core.management.base import BaseCommand, CommandError

from accounts.spend_export import SpendExportError, spend_csv_write, spend_rows


def _date(option: str, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{option} '{text}' is not a date (YYYY-MM-DD)") from None


class Command(BaseCommand):
    help = (
        "Write spend per day, team, key and model (requests, errors, tokens, cost in GATEWAY_CURRENCY) as CSV, "
        "from the daily usage totals; both dates are included (UTC days)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
        parser.add_argument("--end", required=True, help="last day (included), YYYY-MM-DD")
        parser.add_argument("--team", help="only this team's keys (its name)")
        parser.add_argument("--output", help="write to this file instead of standard output")

    def handle(self, *args, **options):
        start = _date("--start", options["start"])
        end = _date("--end", options["end"])
        try:
            rows = spend_rows(start, end, options["team"])
        except SpendExportError as exc:
            raise CommandError(str(exc)) from None
        if not options["output"]:
            spend_csv_write(rows, self.stdout)
            return
        try:
            with open(options["output"], "w", newline="", encoding="utf-8") as out:
                count = spend_csv_write(rows, out)
        except OSError as exc:
            raise CommandError(f"cannot write {options['output']}: {exc.strerror or exc}") from None
        self.stderr.write(f"Wrote {count} rows to {options['output']}.")
