"""The post-data plan and schedule: which pg_restore -l entries run with their table, when, and in which pg_restore."""
import json
import threading

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _pg_post_data as post_data
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import PgTools

LISTING = """;
; Archive created at 2026-12-07 19:00:00 UTC
;     dbname: shop
;
3374; 0 0 ENCODING - ENCODING
3215; 2606 16390 CONSTRAINT public a a_pkey postgres
3219; 2606 16397 CONSTRAINT public b c b c_w_key postgres
3216; 1259 16404 INDEX public ai postgres
3379; 0 0 COMMENT public INDEX ai postgres
;\tdepends on: 3216
3220; 1259 16411 INDEX public p_id_idx postgres
3221; 1259 16412 INDEX public p1_id_idx postgres
;\tdepends on: 3220
3222; 0 0 INDEX ATTACH public p1_id_idx postgres
;\tdepends on: 3221 3220
3230; 1259 16420 INDEX ATTACH INDEX idx postgres
3224; 2620 16418 TRIGGER public a t postgres
3223; 2606 16398 FK CONSTRAINT public b c b c_a_id_fkey postgres
;\tdepends on: 3215
3226; 2606 16401 FK CONSTRAINT public q q_p_fkey postgres
;\tdepends on: 3220
3225; 2606 16399 CHECK CONSTRAINT public a a_v_check postgres
"""
OWNERS = {"2606 16390": "data/0000.sql", "1259 16404": "data/0000.sql", "2606 16397": "data/0001.sql", "1259 16412": "data/0002.sql",
          "2606 16398": "data/0001.sql", "2606 16399": "data/0000.sql", "1259 16420": "data/0003.sql", "2606 16401": "data/0004.sql"}


def test_listing_is_parsed_with_dependencies():
    entries = post_data.parse_toc(LISTING)
    assert entries[0] == (3374, "0 0", "ENCODING - ENCODING", [])
    assert entries[4] == (3379, "0 0", "COMMENT public INDEX ai postgres", [3216])
    assert entries[7] == (3222, "0 0", "INDEX ATTACH public p1_id_idx postgres", [3221, 3220])
    assert [entry[0] for entry in entries] == [3374, 3215, 3219, 3216, 3379, 3220, 3221, 3222, 3230, 3224, 3223, 3226, 3225]


def test_a_table_gets_its_indexes_and_constraints_and_keys_whose_dependencies_are_bound_too():
    """A comment, a check, an index or foreign key depending on an item no table owns, an unknown index: they wait for all."""
    bound, rest = post_data.plan(post_data.parse_toc(LISTING), OWNERS)
    assert bound == [(3215, "data/0000.sql", [], True), (3219, "data/0001.sql", [], True), (3216, "data/0000.sql", [], False),
                     (3230, "data/0003.sql", [], False), (3223, "data/0001.sql", [3215], True)]
    assert rest == [3374, 3379, 3220, 3221, 3222, 3224, 3226, 3225]


def test_the_dump_records_the_table_of_each_item_and_names_for_messages():
    stream = post_data.tables_stream([("data/0000.sql", "public.a", ["2606 16390", "1259 16404"]), ("data/0001.sql", "public.vacia", [])])
    assert json.loads(stream) == {"items": {"2606 16390": "data/0000.sql", "1259 16404": "data/0000.sql"},
                                  "tables": {"data/0000.sql": "public.a"}}


def test_items_run_when_their_table_is_in_what_they_reference_is_done_and_no_lock_blocks_them():
    """Biggest table first; an index beside another index of its table but not beside its primary key; small tables together;
    a foreign key neither beside an item of its table nor of the one it references."""
    big = post_data.BATCH_BYTES
    post = post_data.PostData(None, "shop", 2)
    post.waiting = [(1, "data/0000.sql", [], True), (2, "data/0000.sql", [], False), (3, "data/0000.sql", [], False),
                    (4, "data/0001.sql", [], True), (5, "data/0002.sql", [1], True), (6, "data/0003.sql", [], False),
                    (7, "data/0004.sql", [], True), (8, "data/0004.sql", [], False)]
    post.position = dict((item[0], index) for index, item in enumerate(post.waiting))
    post.table_of = dict((item[0], item[1]) for item in post.waiting)
    units = {}

    def take():
        unit = post.take()
        if unit is not None:
            units[tuple(item[1] for item in unit)] = unit
        return None if unit is None else [item[1] for item in unit]

    def done(*ids):
        post.finished(units.pop(ids))

    post.loaded("data/0002.sql", 10)
    assert post.queue == []  # 5 waits for 1, whose table is not in yet
    post.loaded("data/0000.sql", 3 * big)
    post.loaded("data/0000.sql", 5)  # a second report changes nothing
    post.loaded("data/0001.sql", 2 * big)
    post.loaded("data/0003.sql", 30)
    post.loaded("data/0004.sql", 40)
    post.loaded("data/9999.sql", big)  # a table without items
    assert take() == [1]  # the primary key of the biggest table: nothing else of that table may run beside it
    assert take() == [4]
    done(4)
    assert take() == [7, 8, 6]  # the small tables' items together
    done(1)
    assert take() == [2]
    assert take() == [3]  # two indexes of one table build side by side
    done(7, 8, 6)
    waiter = threading.Thread(target=lambda: units.setdefault("waited", take()))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # 5, a foreign key, would wait for the lock of the indexes on the table it references
    done(2)
    done(3)
    waiter.join(10)
    assert units.pop("waited") == [5]
    done(5)
    post.stopping = True
    assert take() is None and post.waiting == [] and post.queue == []


def test_start_lists_the_spooled_dump_with_pg_restore_and_plans_it(tmp_path):
    """The post-data dump (bytes) reaches ``pg_restore -l -v`` whole, through PgTools.run; a failure names the listing."""
    dump = b"PGDMP\x00\x01\xff" * 1000
    (tmp_path / "dump").write_bytes(dump)
    (tmp_path / "listing").write_text(LISTING)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "pg_restore"
    tool.write_text('#!/bin/sh\n[ "$1 $2" = "-l -v" ] && cmp -s "$3" %s && exec cat %s\n'
                    'echo "pg_restore: error: input file does not appear to be a valid archive" >&2; exit 1\n'
                    % (tmp_path / "dump", tmp_path / "listing"))
    tool.chmod(0o755)
    tools = PgTools(dict(login_user="postgres", login_password="pw", bin_dir=str(bindir)))

    def post_with(data):
        post = post_data.PostData(tools, "shop", 2)
        post.spool(post_data.POST_DATA).write(data)
        post.spool(post_data.TABLES).write(post_data.tables_stream([(stream, "t", [key]) for key, stream in OWNERS.items()]))
        return post

    post = post_with(dump)
    post.start()
    try:
        assert post.waiting == post_data.plan(post_data.parse_toc(LISTING), OWNERS)[0]
        assert post.rest == [3374, 3379, 3220, 3221, 3222, 3224, 3226, 3225]
    finally:
        post._stop()
    with pytest.raises(BackupError) as info:
        post_with(dump[:-1]).start()
    assert str(info.value) == "listing post-data.dump failed: pg_restore: error: input file does not appear to be a valid archive"
