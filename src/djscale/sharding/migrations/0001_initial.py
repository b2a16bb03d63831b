"""The shard map table (main database) and, on every shard, the id function, the id
sequence and the tables + trigger function used by online moves."""

from django.db import migrations, models

SHARD_SQL = r"""
CREATE SEQUENCE IF NOT EXISTS djscale_id_seq;
CREATE OR REPLACE FUNCTION djscale_next_id(logical_shard integer, epoch_ms bigint)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    seq bigint;
    now_ms bigint;
BEGIN
    IF logical_shard < 0 OR logical_shard > 8191 THEN
        RAISE EXCEPTION 'djscale_next_id: logical shard % is not in 0..8191', logical_shard;
    END IF;
    seq := nextval('djscale_id_seq') % 1024;
    IF seq = 0 THEN
        -- the 10-bit sequence wrapped: this session's next 1024 ids get a later millisecond
        PERFORM pg_sleep(0.001);
    END IF;
    now_ms := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    RETURN ((now_ms - epoch_ms) << 23) | (logical_shard::bigint << 10) | seq;
END
$$;

CREATE TABLE IF NOT EXISTS djscale_shard_moves (
    logical integer PRIMARY KEY,
    state text NOT NULL,
    target text NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS djscale_shard_changelog (
    seq bigserial PRIMARY KEY,
    logical integer NOT NULL,
    tbl text NOT NULL,
    row_id bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS djscale_shard_changelog_logical
    ON djscale_shard_changelog (logical, seq);

CREATE OR REPLACE FUNCTION djscale_move_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    rid bigint;
    ls integer;
    st text;
BEGIN
    IF TG_OP = 'DELETE' THEN rid := OLD.id; ELSE rid := NEW.id; END IF;
    IF rid IS NULL OR current_setting('djscale.move_bypass', true) = 'on' THEN
        IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
        RETURN NEW;
    END IF;
    ls := ((rid >> 10) & 8191)::integer;
    SELECT state INTO st FROM djscale_shard_moves WHERE logical = ls;
    IF FOUND AND st <> 'copying' THEN
        -- frozen: wait until the move finishes; moved: refuse, the app retries elsewhere
        PERFORM pg_advisory_xact_lock_shared(7355608, ls);
        SELECT state INTO st FROM djscale_shard_moves WHERE logical = ls;
        IF FOUND AND st = 'moved' THEN
            RAISE EXCEPTION 'djscale: logical shard % has moved to another database', ls
                USING ERRCODE = 'DJ001', HINT = 'reload the shard map and retry the write';
        END IF;
    END IF;
    IF FOUND AND st = 'copying' THEN
        INSERT INTO djscale_shard_changelog (logical, tbl, row_id)
        VALUES (ls, TG_TABLE_NAME, rid);
        IF TG_OP = 'UPDATE' AND OLD.id <> NEW.id THEN
            INSERT INTO djscale_shard_changelog (logical, tbl, row_id)
            VALUES (ls, TG_TABLE_NAME, OLD.id);
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END
$$;
"""

REVERSE_SQL = """
DROP FUNCTION IF EXISTS djscale_move_guard() CASCADE;
DROP TABLE IF EXISTS djscale_shard_changelog;
DROP TABLE IF EXISTS djscale_shard_moves;
DROP FUNCTION IF EXISTS djscale_next_id(integer, bigint);
DROP SEQUENCE IF EXISTS djscale_id_seq;
"""


class Migration(migrations.Migration):
    initial = True

    operations = [
        migrations.CreateModel(
            name="ShardMapEntry",
            fields=[
                ("logical", models.IntegerField(primary_key=True, serialize=False)),
                ("alias", models.CharField(max_length=64)),
                ("state", models.CharField(default="active", max_length=16)),
                ("version", models.BigIntegerField(default=1)),
            ],
            options={"db_table": "djscale_shard_map"},
        ),
        migrations.RunSQL(SHARD_SQL, REVERSE_SQL, hints={"djscale_shards": True}),
    ]
