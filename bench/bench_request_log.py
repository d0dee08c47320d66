"""The request log at a million rows on PostgreSQL: table size, the admin viewer's filtered pages, and retention.

Starts a private PostgreSQL server (tests/support/postgres.py, with fsync and synchronous commit on, as in
production), migrates, and loads `--rows` request log records with COPY: 200 keys in 20 teams (a few keys make
most of the traffic), 12 models, realistic statuses, spread evenly over `--days` days up to now; 85% `full`
records with a zlib-compressed JSON body of a few KB and 1-2 KB of search text, 15% `metadata` records (small
body, no text). One full record in 2,000 mentions "zanzibarite", one in 50 "invoice". Bodies and texts are drawn
from pools of a few thousand (PostgreSQL stores every copy: the sizes are real). Beside them, 15 days of
health-check history (3 providers every 30 s).

Then it builds the viewer's trigram search index the way migration 0008 does (CREATE INDEX CONCURRENTLY on the full
table), and measures:
- the table's size: heap, TOAST (the bodies), each index;
- the admin changelist (Django's test client, as a superuser; first page, median of `--runs`) filtered by key and
  date range, by model and status, searched for a rare and a common word, and unfiltered; or, when the request
  log has no admin, the equivalent querysets (the output says which);
- the retention task's cleanup (accounts.retention.retention_run, as the beat task runs it: 20 s runs of 1,000-row
  batches) of the records past GATEWAY_LOG_RETENTION_DAYS, its longest batch, and meanwhile the latency of a
  writer inserting 100 records at a time (the usage flush) and of a reader of one key's newest page.

Usage: `python bench/bench_request_log.py [--rows 1000000] [--days 45] [--runs 7]` (`make bench-request-log`).
The server and its data (about 6 GB at a million rows) are deleted at the end.
"""

import argparse
import os
import random
import shutil
import statistics
import sys
import threading
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.postgres import postgres_server  # noqa: E402

TABLE = "accounts_requestlog"
KEYS = 200
TEAMS = 20
MODELS = [
    ("gpt-4o-mini", 30),
    ("claude-sonnet-4", 18),
    ("gpt-4o", 12),
    ("claude-haiku-4", 10),
    ("deepseek-chat", 8),
    ("gemini-2.5-flash", 6),
    ("llama-3.3-70b", 5),
    ("qwen-2.5-72b", 4),
    ("mistral-large", 3),
    ("o3-mini", 2),
    ("yi-large", 1),
    ("text-embedding-3-small", 1),
]
STATUSES = [(200, 940), (429, 20), (400, 12), (499, 10), (500, 5), (502, 6), (503, 4), (401, 3)]
RARE_WORD, COMMON_WORD = "zanzibarite", "invoice"
RARE_EVERY, COMMON_EVERY = 2000, 50
BODY_POOL, TEXT_POOL = 3000, 5000
HEALTH_PROVIDERS, HEALTH_DAYS, HEALTH_EVERY_S = 3, 15, 30
PAGE = 50  # the admin's list_per_page


def vocabulary(rng: random.Random, size: int = 4000) -> tuple[list[str], list[float]]:
    """Made-up words with Zipf weights: text that compresses about as much as prose does (~3x with zlib)."""
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "ch", "sh", "qu"]
    words = sorted({"".join(rng.choices(syllables, k=rng.choice((1, 2, 2, 3, 3, 4)))) for _ in range(size * 2)})
    words = [w for w in words if w not in (RARE_WORD, COMMON_WORD)][:size]
    rng.shuffle(words)
    return words, [1 / (rank + 1) for rank in range(len(words))]


def prose(rng: random.Random, words, weights, count: int) -> str:
    chosen = rng.choices(words, weights, k=count)
    sentences, start = [], 0
    while start < count:
        length = rng.randint(6, 22)
        sentence = " ".join(chosen[start : start + length])
        sentences.append(sentence[:1].upper() + sentence[1:] + rng.choice(".....?!"))
        start += length
    return " ".join(sentences)


def body_pool(rng: random.Random, words, weights) -> tuple[list[tuple[bytes, int]], list[tuple[bytes, int]]]:
    """(compressed body, original bytes) for full and for metadata records."""
    full = []
    for _ in range(BODY_POOL):
        # Lognormal sizes: most a few KB compressed, a tail of long conversations.
        total_words = int(min(40_000, rng.lognormvariate(7.0, 0.6)))
        turns = rng.randint(1, 6)
        messages = [{"role": "system", "content": prose(rng, words, weights, total_words // (turns * 4) + 5)}]
        for turn in range(turns):
            role = "user" if turn % 2 == 0 else "assistant"
            messages.append({"role": role, "content": prose(rng, words, weights, total_words // turns)})
        record = {
            "request": {"model": "gpt-4o-mini", "messages": messages, "temperature": 0.7, "stream": True},
            "response": {
                "choices": [{"index": 0, "message": {"role": "assistant", "content": prose(rng, words, weights, 200)}}],
                "usage": {"prompt_tokens": total_words * 4 // 3, "completion_tokens": 270},
            },
        }
        data = orjson.dumps(record)
        full.append((zlib.compress(data, 6), len(data)))
    metadata = []
    for _ in range(200):
        record = {"request": {"model": "gpt-4o", "temperature": 0.2, "max_tokens": 512, "messages_count": 3}}
        data = orjson.dumps(record)
        metadata.append((zlib.compress(data, 6), len(data)))
    return full, metadata


def text_pool(rng: random.Random, words, weights) -> list[str]:
    texts = []
    for _ in range(TEXT_POOL):
        text = prose(rng, words, weights, rng.randint(170, 340))  # 1-2 KB
        texts.append(text)
    return texts


def insert_word(rng: random.Random, text: str, word: str) -> str:
    cut = rng.randint(0, len(text))
    cut = text.rfind(" ", 0, cut) + 1
    return f"{text[:cut]}{word} {text[cut:]}"


def column_types(cursor, table: str, columns: list[str]) -> list[str]:
    cursor.execute("SELECT column_name, udt_name FROM information_schema.columns WHERE table_name = %s", [table])
    types = dict(cursor.fetchall())
    return [types[name] for name in columns]


def load(args, database_url: str, keys: list[tuple[int, int, int]], now: datetime) -> dict:
    """COPY the records and the health history; returns figures of the load."""
    import psycopg

    rng = random.Random(7)
    words, weights = vocabulary(rng)
    started = time.monotonic()
    full_bodies, metadata_bodies = body_pool(rng, words, weights)
    texts = text_pool(rng, words, weights)
    pools_seconds = time.monotonic() - started
    key_weights = [1 / (rank + 1) ** 1.1 for rank in range(len(keys))]
    model_names, model_weights = zip(*MODELS, strict=True)
    codes, code_weights = zip(*STATUSES, strict=True)
    columns = ["request_id", "created_at", "api_key_id", "user_id", "team_id", "model", "endpoint", "status_code",
               "level", "body", "stored_bytes", "original_bytes", "truncated", "redactions", "search_text"]  # fmt: skip
    start = now - timedelta(days=args.days)
    step = timedelta(days=args.days) / args.rows
    chunk = 50_000
    stored_total = 0
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        types = column_types(conn.cursor(), TABLE, columns)
        for first in range(0, args.rows, chunk):
            count = min(chunk, args.rows - first)
            picked_keys = rng.choices(keys, key_weights, k=count)
            picked_models = rng.choices(model_names, model_weights, k=count)
            picked_codes = rng.choices(codes, code_weights, k=count)
            with (
                conn.cursor() as cursor,
                cursor.copy(f"COPY {TABLE} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(types)
                for offset in range(count):
                    index = first + offset
                    key_id, user_id, team_id = picked_keys[offset]
                    if rng.random() < 0.85:
                        body, original = full_bodies[rng.randrange(BODY_POOL)]
                        level = "full"
                        text = texts[rng.randrange(TEXT_POOL)]
                        if index % RARE_EVERY == 7:
                            text = insert_word(rng, text, RARE_WORD)
                        if index % COMMON_EVERY == 3:
                            text = insert_word(rng, text, COMMON_WORD)
                    else:
                        body, original = metadata_bodies[rng.randrange(len(metadata_bodies))]
                        level, text = "metadata", ""
                    stored_total += len(body)
                    copy.write_row(
                        (
                            f"req_{uuid.uuid4().hex}",
                            start + step * index,
                            key_id,
                            user_id,
                            team_id,
                            picked_models[offset],
                            "chat.completions",
                            picked_codes[offset],
                            level,
                            body,
                            len(body),
                            original,
                            False,
                            rng.choice((0, 0, 0, 0, 1, 2)),
                            text,
                        )
                    )
            done = first + count
            if done % 200_000 == 0 or done == args.rows:
                rate = done / (time.monotonic() - started)
                print(f"  loaded {done:,} records ({rate:,.0f}/s)", flush=True)
        copy_seconds = time.monotonic() - started
        # Health-check history: 3 providers every 30 s.
        provider_ids = [row[0] for row in conn.execute("SELECT id FROM providers_provider ORDER BY id")]
        health_rows = 0
        with (
            conn.cursor() as cursor,
            cursor.copy(
                "COPY providers_healthcheck (provider_id, checked_at, ok, status_code, latency_ms, error) FROM STDIN"
            ) as copy,
        ):
            moment = now - timedelta(days=HEALTH_DAYS)
            while moment < now:
                for provider_id in provider_ids:
                    copy.write_row((provider_id, moment, True, 200, 12.5, ""))
                    health_rows += 1
                moment += timedelta(seconds=HEALTH_EVERY_S)
    return {
        "pools_seconds": pools_seconds,
        "copy_seconds": copy_seconds,
        "stored_mean": stored_total / args.rows,
        "body_mean_full": statistics.mean(len(b) for b, _ in full_bodies),
        "body_p50_full": statistics.median(len(b) for b, _ in full_bodies),
        "original_mean_full": statistics.mean(o for _, o in full_bodies),
        "text_mean": statistics.mean(len(t) for t in texts),
        "health_rows": health_rows,
    }


def sizes() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_total_relation_size(c.oid), pg_relation_size(c.oid), "
            "COALESCE(pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0), pg_indexes_size(c.oid), "
            "(SELECT count(*) FROM accounts_requestlog) FROM pg_class c WHERE c.relname = %s",
            [TABLE],
        )
        total, heap, toast, indexes, rows = cursor.fetchone()
        cursor.execute(
            "SELECT i.relname, pg_relation_size(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_class t ON t.oid = x.indrelid WHERE t.relname = %s ORDER BY 2 DESC",
            [TABLE],
        )
        per_index = cursor.fetchall()
        cursor.execute("SELECT pg_total_relation_size('providers_healthcheck'), count(*) FROM providers_healthcheck")
        health_total, health_rows = cursor.fetchone()
    return {
        "total": total,
        "heap": heap,
        "toast": toast,
        "indexes": indexes,
        "rows": rows,
        "per_index": per_index,
        "health_total": health_total,
        "health_rows": health_rows,
    }


def mb(size: int) -> str:
    return f"{size / 1024 / 1024:,.0f} MB"


def viewer_cases(keys, now: datetime) -> list[tuple[str, dict]]:
    """(label, filter) of each page measured; a mid-traffic key (rank 20) over a week within retention."""
    key_id, _user, team_id = keys[19]
    # The vocabulary's most frequent word (the load draws from the same seed): in nearly every full record.
    frequent = vocabulary(random.Random(7))[0][0]
    since = (now - timedelta(days=20)).date().isoformat()
    until = (now - timedelta(days=14)).date().isoformat()
    return [
        ("first page, no filter", {}),
        ("key + date range (7 days)", {"api_key__id__exact": key_id, "since": since, "until": until}),
        ("team + last 24 hours", {"team__id__exact": team_id, "period": "24h"}),
        ("model + status 5xx", {"model": "claude-sonnet-4", "status": "5xx"}),
        ("model + status 429", {"model": "deepseek-chat", "status": "429"}),
        (f"search: rare word ({RARE_WORD}, 1 in {RARE_EVERY:,})", {"q": RARE_WORD}),
        (f"search: common word ({COMMON_WORD}, 1 in {COMMON_EVERY})", {"q": COMMON_WORD}),
        ("search: word nobody wrote", {"q": "xylophonic"}),
        (f"search: a word in most records ({frequent})", {"q": frequent}),
        (f"search {COMMON_WORD} + key", {"q": COMMON_WORD, "api_key__id__exact": key_id}),
    ]


def queryset_for(params: dict):
    """The viewer's list query without its admin: the same filters, newest first, bodies not read."""
    from django.utils import timezone

    from accounts.models import RequestLog

    queryset = RequestLog.objects.defer("body", "search_text").select_related("api_key", "team")
    if "api_key__id__exact" in params:
        queryset = queryset.filter(api_key_id=params["api_key__id__exact"])
    if "team__id__exact" in params:
        queryset = queryset.filter(team_id=params["team__id__exact"])
    if "model" in params:
        queryset = queryset.filter(model=params["model"])
    if params.get("status") == "5xx":
        queryset = queryset.filter(status_code__gte=500)
    elif "status" in params:
        queryset = queryset.filter(status_code=int(params["status"]))
    if params.get("period") == "24h":
        queryset = queryset.filter(created_at__gte=timezone.now() - timedelta(days=1))
    if "since" in params:
        queryset = queryset.filter(created_at__gte=datetime.fromisoformat(params["since"]).replace(tzinfo=UTC))
    if "until" in params:
        until = datetime.fromisoformat(params["until"]).replace(tzinfo=UTC) + timedelta(days=1)
        queryset = queryset.filter(created_at__lt=until)
    if "q" in params:
        queryset = queryset.filter(search_text__icontains=params["q"])
    return queryset.order_by("-created_at")


def statement_kind(sql: str) -> str:
    if TABLE not in sql:
        return "other"
    return "count" if "COUNT(" in sql else "page" if "LIMIT" in sql else "other"


def measure_viewer(keys, now: datetime, runs: int) -> tuple[str, list[dict]]:
    """Each case's page time (median and slowest of `runs`, after one warm-up), its SQL time and query count."""
    from django.contrib import admin
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    from accounts.models import RequestLog

    use_admin = admin.site.is_registered(RequestLog)
    client = None
    if use_admin:
        setup_test_environment()
        user = get_user_model().objects.create_superuser("bench-admin", "bench@example.com", uuid.uuid4().hex)
        client = Client()
        client.force_login(user)
    url = "/admin/accounts/requestlog/"
    results = []
    for label, params in viewer_cases(keys, now):
        samples, sql_ms, statements, queries_count, shown = [], [], [], 0, 0
        for run in range(runs + 1):
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                if use_admin:
                    response = client.get(url, params)
                    if response.status_code != 200:
                        raise SystemExit(
                            f"{label}: the admin answered {response.status_code} {response.get('Location')}"
                        )
                    shown = len(response.context["cl"].result_list)
                else:
                    queryset = queryset_for(params)
                    shown = len(list(queryset[:PAGE]))
                    queryset[:10_001].count()
                elapsed = (time.perf_counter() - started) * 1000
            if run:
                samples.append(elapsed)
                sql_ms.append(sum(float(q["time"]) for q in queries.captured_queries) * 1000)
                queries_count = len(queries.captured_queries)
                statements.append(max(queries.captured_queries, key=lambda q: float(q["time"])))
        slowest = statements[len(statements) // 2]
        results.append(
            {
                "label": label,
                "median": statistics.median(samples),
                "max": max(samples),
                "sql": statistics.median(sql_ms),
                "queries": queries_count,
                "shown": shown,
                "slowest": f"{statement_kind(slowest['sql'])} {float(slowest['time']) * 1000:.0f} ms",
            }
        )
        print(f"  {label}: {statistics.median(samples):.1f} ms ({shown} rows shown)", flush=True)
        if float(slowest["time"]) > 0.1:
            print(f"    its slowest statement: {slowest['sql'][:400]}")
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slowest["sql"])
                print("\n".join("      " + row[0] for row in cursor.fetchall()), flush=True)
    return ("admin changelist (test client)" if use_admin else "equivalent querysets (no admin)"), results


class Probe(threading.Thread):
    """While retention runs: a writer inserting 100 records in one transaction (the usage flush) and a reader of
    one key's newest page, every 100 ms, each on its own connection; their latencies by phase."""

    def __init__(self, database_url: str, key_id: int):
        super().__init__(daemon=True)
        self.database_url = database_url
        self.key_id = key_id
        self.phase = "before"
        self.stopped = threading.Event()
        self.samples: dict[str, dict[str, list[float]]] = {}

    def run(self) -> None:
        import psycopg

        body = zlib.compress(b'{"request": {"model": "gpt-4o-mini"}}')
        with (
            psycopg.connect(self.database_url) as writer,
            psycopg.connect(self.database_url, autocommit=True) as reader,
        ):
            while not self.stopped.is_set():
                now = datetime.now(UTC)
                fields = ("gpt-4o-mini", "chat.completions", 200, "full", body, len(body), 10, False, 0, "probe text")
                rows = [(f"req_{uuid.uuid4().hex}", now, *fields) for _ in range(100)]
                started = time.perf_counter()
                with writer.cursor() as cursor:
                    cursor.executemany(
                        f"INSERT INTO {TABLE} (request_id, created_at, model, endpoint, status_code, level, body, "
                        "stored_bytes, original_bytes, truncated, redactions, search_text) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        rows,
                    )
                writer.commit()
                wrote = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                reader.execute(
                    f"SELECT id, created_at, model, status_code FROM {TABLE} WHERE api_key_id = %s "
                    "ORDER BY created_at DESC LIMIT 50",
                    [self.key_id],
                ).fetchall()
                read = (time.perf_counter() - started) * 1000
                phase = self.samples.setdefault(self.phase, {"write": [], "read": []})
                phase["write"].append(wrote)
                phase["read"].append(read)
                self.stopped.wait(0.1)


def measure_cleanup(database_url: str, key_id: int) -> dict:
    from django.conf import settings
    from django.db import connection

    from accounts.retention import RETENTION_BATCH_SIZE, RETENTION_RUN_SECONDS, retention_run

    deletes: list[float] = []

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            if sql.startswith(f'DELETE FROM "{TABLE}"'):
                deletes.append(time.perf_counter() - started)

    probe = Probe(database_url, key_id)
    probe.start()
    time.sleep(5)
    probe.phase = "during"
    runs = []
    started = time.monotonic()
    while True:
        with connection.execute_wrapper(timed):
            results = retention_run()
        runs.append(results)
        log, health = results["request log records"], results["health checks"]
        longest = max(log.longest_batch_seconds, health.longest_batch_seconds) * 1000
        print(
            f"  run {len(runs)}: {log.deleted:,} records, {health.deleted:,} health checks in "
            f"{log.seconds + health.seconds:.1f} s, longest batch {longest:.0f} ms",
            flush=True,
        )
        if log.done and health.done:
            break
    total = time.monotonic() - started
    probe.phase = "after"
    time.sleep(3)
    probe.stopped.set()
    probe.join()
    logs = [r["request log records"] for r in runs]
    healths = [r["health checks"] for r in runs]
    return {
        "retention_days": settings.GATEWAY_LOG_RETENTION_DAYS,
        "health_retention_days": settings.GATEWAY_HEALTH_RETENTION_DAYS,
        "batch_size": RETENTION_BATCH_SIZE,
        "run_seconds": RETENTION_RUN_SECONDS,
        "runs": len(runs),
        "seconds": total,
        "deleted": sum(e.deleted for e in logs),
        "batches": sum(e.batches for e in logs),
        "log_seconds": sum(e.seconds for e in logs),
        "longest_batch": max(e.longest_batch_seconds for e in logs),
        "delete_p50": statistics.median(deletes),
        "delete_p99": statistics.quantiles(deletes, n=100, method="inclusive")[98] if len(deletes) > 1 else deletes[0],
        "delete_max": max(deletes),
        "health_deleted": sum(e.deleted for e in healths),
        "health_seconds": sum(e.seconds for e in healths),
        "health_longest_batch": max(e.longest_batch_seconds for e in healths),
        "probe": probe.samples,
    }


def timed_sql(sql: str) -> float:
    from django.db import connection

    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(sql)
    return time.monotonic() - started


def search_index_build() -> float:
    """Migration 0008's index on the loaded table (dropped before the load), built as migrate builds it."""
    from importlib import import_module

    from django.db import connection

    migration = import_module("accounts.migrations.0008_request_log_search_index")
    started = time.monotonic()
    with connection.schema_editor(atomic=False) as editor:
        migration.search_index_create(None, editor)
    return time.monotonic() - started


def setup_accounts(now: datetime) -> list[tuple[int, int, int]]:
    """Users, teams, keys and models, without signals (no Redis needed); (key id, owner id, team id) by traffic."""
    from django.contrib.auth import get_user_model

    from accounts.models import ApiKey, Team, Tier
    from providers.models import Model, Provider

    users = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"user{n}", email=f"user{n}@example.com") for n in range(50)]
    )
    teams = Team.objects.bulk_create([Team(name=f"team-{n}") for n in range(TEAMS)])
    tier = Tier.objects.bulk_create([Tier(name="bench")])[0]
    keys = ApiKey.objects.bulk_create(
        [
            ApiKey(
                owner=users[n % len(users)],
                team=teams[n % TEAMS],
                name=f"key-{n}",
                tier=tier,
                key_hash=uuid.uuid4().hex + uuid.uuid4().hex,
                prefix=f"sk-gw-{n:06d}",
            )
            for n in range(KEYS)
        ]
    )
    Model.objects.bulk_create([Model(name=name) for name, _weight in MODELS])
    Provider.objects.bulk_create(
        [
            Provider(name=f"provider-{n}", base_url=f"https://provider-{n}.example.com/v1")
            for n in range(HEALTH_PROVIDERS)
        ]
    )
    return [(key.pk, key.owner_id, key.team_id) for key in keys]


def report(args, figures: dict) -> None:
    before, after = figures["size_before"], figures["size_after"]
    loaded = figures["load"]
    print()
    print(f"Request log at {args.rows:,} rows over {args.days} days, PostgreSQL {figures['server']}, ", end="")
    print(f"{os.cpu_count()} cores")
    print()
    print("| load | |")
    print("| --- | ---: |")
    copy_seconds = loaded["copy_seconds"]
    print(f"| COPY of {args.rows:,} records | {copy_seconds:.0f} s ({args.rows / copy_seconds:,.0f}/s) |")
    print(f"| VACUUM ANALYZE after the load | {figures['vacuum_load']:.0f} s |")
    print(f"| search index built by migration 0008 (CONCURRENTLY) | {figures['index_build']:.0f} s |")
    print(f"| full record: body stored (mean / median), its JSON | {loaded['body_mean_full'] / 1024:.1f} / "
          f"{loaded['body_p50_full'] / 1024:.1f} KB, {loaded['original_mean_full'] / 1024:.1f} KB |")  # fmt: skip
    print(f"| full record: search text (mean) | {loaded['text_mean'] / 1024:.1f} KB |")
    print()
    print("| size | after the load | after retention + VACUUM |")
    print("| --- | ---: | ---: |")
    print(f"| records | {before['rows']:,} | {after['rows']:,} |")
    print(f"| total (pg_total_relation_size) | {mb(before['total'])} | {mb(after['total'])} |")
    print(f"| heap | {mb(before['heap'])} | {mb(after['heap'])} |")
    print(f"| TOAST (bodies) | {mb(before['toast'])} | {mb(after['toast'])} |")
    print(f"| indexes | {mb(before['indexes'])} | {mb(after['indexes'])} |")
    after_index = dict(after["per_index"])
    for name, size in before["per_index"]:
        print(f"| - {name} | {mb(size)} | {mb(after_index.get(name, 0))} |")
    print(f"| health history ({before['health_rows']:,} / {after['health_rows']:,} rows) | "
          f"{mb(before['health_total'])} | {mb(after['health_total'])} |")  # fmt: skip
    print()
    print(f"Viewer: {figures['viewer_kind']}, first page ({PAGE} rows), median of {args.runs} (slowest)")
    print()
    print("| page | median | slowest | of which SQL | slowest statement | queries | rows shown |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for row in figures["viewer"]:
        print(f"| {row['label']} | {row['median']:.0f} ms | {row['max']:.0f} ms | {row['sql']:.0f} ms | "
              f"{row['slowest']} | {row['queries']} | {row['shown']} |")  # fmt: skip
    cleanup = figures["cleanup"]
    print()
    print(f"Retention: records older than {cleanup['retention_days']} days (health checks: "
          f"{cleanup['health_retention_days']}), batches of {cleanup['batch_size']:,}, runs of at most "
          f"{cleanup['run_seconds']:.0f} s")  # fmt: skip
    print()
    print("| cleanup | |")
    print("| --- | ---: |")
    print(f"| records deleted | {cleanup['deleted']:,} |")
    seconds, batches = cleanup["log_seconds"], max(1, cleanup["batches"])
    rate = cleanup["deleted"] / seconds if seconds else 0
    print(f"| time (all runs back to back) | {seconds:.1f} s ({rate:,.0f} records/s) |")
    print(f"| runs of the beat task needed | {cleanup['runs']} |")
    print(f"| batches, mean batch | {cleanup['batches']:,}, {seconds / batches * 1000:.0f} ms |")
    print(f"| longest batch (longest lock on any row) | {cleanup['longest_batch'] * 1000:.0f} ms |")
    print(f"| a batch's DELETE statement: p50 / p99 / max | {cleanup['delete_p50'] * 1000:.0f} / "
          f"{cleanup['delete_p99'] * 1000:.0f} / {cleanup['delete_max'] * 1000:.0f} ms |")  # fmt: skip
    print(f"| health checks deleted, time, longest batch | {cleanup['health_deleted']:,}, "
          f"{cleanup['health_seconds']:.2f} s, {cleanup['health_longest_batch'] * 1000:.0f} ms |")  # fmt: skip
    print(f"| VACUUM after the cleanup | {figures['vacuum_cleanup']:.0f} s |")
    print()
    print("| meanwhile, every 100 ms | before: p50 / max | during: p50 / max | after: p50 / max |")
    print("| --- | ---: | ---: | ---: |")
    for kind, label in (("write", "insert 100 records (one transaction)"), ("read", "one key's newest page")):
        cells = []
        for phase in ("before", "during", "after"):
            values = cleanup["probe"].get(phase, {}).get(kind) or [0.0]
            cells.append(f"{statistics.median(values):.1f} / {max(values):.1f} ms")
        print(f"| {label} | {' | '.join(cells)} |")


def run(args, server) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    print("migrating", flush=True)
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
        for name in ("shared_buffers", "work_mem", "maintenance_work_mem"):
            cursor.execute(f"SHOW {name}")
            version += f", {name} {cursor.fetchone()[0]}"
        # Loaded without the trigram index; built afterwards the way migration 0008 builds it on a full table.
        cursor.execute("DROP INDEX accounts_requestlog_search_trgm")
    now = timezone.now()
    keys = setup_accounts(now)
    print(f"loading {args.rows:,} records", flush=True)
    figures = {"server": version}
    figures["load"] = load(args, server.database_url, keys, now)
    print("VACUUM ANALYZE", flush=True)
    figures["vacuum_load"] = timed_sql(f"VACUUM (ANALYZE) {TABLE}") + timed_sql(
        "VACUUM (ANALYZE) providers_healthcheck"
    )
    print("building the search index (migration 0008)", flush=True)
    figures["index_build"] = search_index_build()
    figures["size_before"] = sizes()
    print("viewer pages", flush=True)
    figures["viewer_kind"], figures["viewer"] = measure_viewer(keys, now, args.runs)
    print("retention", flush=True)
    figures["cleanup"] = measure_cleanup(server.database_url, keys[19][0])
    figures["vacuum_cleanup"] = timed_sql(f"VACUUM (ANALYZE) {TABLE}")
    figures["size_after"] = sizes()
    report(args, figures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--runs", type=int, default=7, help="samples of each viewer page")
    args = parser.parse_args()
    server = postgres_server()
    try:
        server.start(durable=True)
        print(f"PostgreSQL on 127.0.0.1:{server.port} ({server.root})", flush=True)
        os.environ["DATABASE_URL"] = server.database_url
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aigateway.settings")
        os.environ.setdefault("DJANGO_DEBUG", "True")
        run(args, server)
    finally:
        from django.db import connections

        try:
            connections.close_all()
        except Exception:  # noqa: BLE001 - the server goes next anyway
            pass
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
