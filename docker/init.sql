-- Django's database cache table (python manage.py createcachetable), created on the first start.
CREATE TABLE IF NOT EXISTS public.tracebase_cache_table (
    cache_key varchar(255) PRIMARY KEY,
    value text NOT NULL,
    expires timestamptz NOT NULL
);
