"""A Django 4.2 process of the issue-12 workload (see django.rs): the database cache backend on a
throwaway PostgreSQL.

    python3 django_workload.py setup  HOST PORT
    python3 django_workload.py writer HOST PORT NAME SECONDS SEED
    python3 django_workload.py job    HOST PORT NAME SECONDS PERIOD

setup: `createcachetable`. writer: a web worker — cache.set (culls past MAX_ENTRIES), cache.get
(deletes expired keys), some of its work inside transaction.atomic() like a view with
ATOMIC_REQUESTS. job: the forgotten script — cache.delete_many(...) every PERIOD seconds.
Each process prints one JSON line with its application_name, backend pid and what it did.
"""
import json
import random
import sys
import time

import django
from django.conf import settings


def configure(host, port, app):
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "postgres",
                "USER": "postgres",
                "HOST": host,
                "PORT": port,
                "CONN_MAX_AGE": None,
                "OPTIONS": {"application_name": app},
            }
        },
        CACHES={
            "default": {
                "BACKEND": "django.core.cache.backends.db.DatabaseCache",
                "LOCATION": "django_cache",
                "TIMEOUT": 300,
                "OPTIONS": {"MAX_ENTRIES": 300, "CULL_FREQUENCY": 4},
            }
        },
        USE_TZ=True,
        INSTALLED_APPS=[],
    )
    django.setup()


def backend_pid():
    from django.db import connection

    with connection.cursor() as c:
        c.execute("SELECT pg_backend_pid()")
        return c.fetchone()[0]


KEYS = 600


def main():
    role, host, port = sys.argv[1], sys.argv[2], sys.argv[3]
    if role == "setup":
        configure(host, port, "setup")
        from django.core.management import call_command

        call_command("createcachetable", verbosity=0)
        print(json.dumps({"role": "setup"}))
        return
    name, seconds = sys.argv[4], float(sys.argv[5])
    configure(host, port, name)
    from django.core.cache import cache
    from django.db import transaction

    pid = backend_pid()
    end = time.monotonic() + seconds
    ops = 0
    if role == "writer":
        rnd = random.Random(int(sys.argv[6]))
        while time.monotonic() < end:
            k = "k%d" % rnd.randrange(KEYS)
            r = rnd.random()
            if r < 0.3:
                # A request under ATOMIC_REQUESTS: the cull happens inside the transaction block.
                with transaction.atomic():
                    cache.set(k, "v" * 100, timeout=rnd.choice([1, 2, 30]))
                    cache.get("k%d" % rnd.randrange(KEYS))
            elif r < 0.7:
                cache.set(k, "v" * 100, timeout=rnd.choice([1, 2, 30]))
            else:
                # Expired keys are deleted by the read (autocommit).
                cache.get_many(["k%d" % rnd.randrange(KEYS) for _ in range(5)])
            ops += 1
            time.sleep(rnd.uniform(0.002, 0.02))
    elif role == "job":
        period = float(sys.argv[6])
        rnd = random.Random(12)
        while time.monotonic() < end:
            cache.delete_many(["k%d" % i for i in rnd.sample(range(KEYS), 150)])
            ops += 1
            time.sleep(period)
    print(json.dumps({"role": role, "name": name, "pid": pid, "ops": ops}))


if __name__ == "__main__":
    main()
