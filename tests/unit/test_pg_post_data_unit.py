"""The post-data plan: which pg_restore -l entries run with their table, and which wait for all the data."""
import json

from ansible_collections.minimarket.backup.plugins.module_utils import _pg_post_data as post_data

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
3225; 2606 16399 CHECK CONSTRAINT public a a_v_check postgres
"""
OWNERS = {"2606 16390": "data/0000.sql", "1259 16404": "data/0000.sql", "2606 16397": "data/0001.sql", "1259 16412": "data/0002.sql",
          "2606 16398": "data/0001.sql", "2606 16399": "data/0000.sql", "1259 16420": "data/0003.sql"}


def test_listing_is_parsed_with_dependencies():
    entries = post_data.parse_toc(LISTING)
    assert entries[0] == (3374, "0 0", "ENCODING - ENCODING", [])
    assert entries[4] == (3379, "0 0", "COMMENT public INDEX ai postgres", [3216])
    assert entries[7] == (3222, "0 0", "INDEX ATTACH public p1_id_idx postgres", [3221, 3220])
    assert [entry[0] for entry in entries] == [3374, 3215, 3219, 3216, 3379, 3220, 3221, 3222, 3230, 3224, 3223, 3225]


def test_a_table_gets_only_its_own_indexes_and_constraints():
    """A foreign key, a check, a comment, an index depending on another table's index, an unknown index: all wait."""
    groups, rest = post_data.plan(post_data.parse_toc(LISTING), OWNERS)
    assert groups == {"data/0000.sql": [3215, 3216], "data/0001.sql": [3219], "data/0003.sql": [3230]}
    assert rest == [3374, 3379, 3220, 3221, 3222, 3224, 3223, 3225]


def test_the_dump_records_the_table_of_each_item_and_names_for_messages():
    stream = post_data.tables_stream([("data/0000.sql", "public.a", ["2606 16390", "1259 16404"]), ("data/0001.sql", "public.vacia", [])])
    assert json.loads(stream) == {"items": {"2606 16390": "data/0000.sql", "1259 16404": "data/0000.sql"},
                                  "tables": {"data/0000.sql": "public.a"}}
