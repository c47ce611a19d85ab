import zlib

from snapkv.common.slots import SLOTS, hash_tag, key_slot


def test_slot_is_crc32_of_key_mod_4096():
    assert SLOTS == 4096
    for key in [b"k1", b"user:1000", "ключ".encode(), b"a/b\nc"]:
        assert key_slot(key) == zlib.crc32(key) % 4096


def test_hash_tag_groups_related_keys():
    assert hash_tag(b"{user1}.name") == b"user1"
    assert key_slot(b"{user1}.name") == key_slot(b"{user1}.email") == key_slot(b"user1")


def test_empty_or_unclosed_tag_hashes_whole_key():
    assert hash_tag(b"{}.x") == b"{}.x"
    assert hash_tag(b"{abc") == b"{abc"
    assert hash_tag(b"a{b}c{d}") == b"b"  # first tag only


def test_slots_spread_evenly():
    counts = [0] * SLOTS
    for i in range(200_000):
        counts[key_slot(f"key:{i}".encode())] += 1
    mean = 200_000 / SLOTS
    assert max(counts) < mean * 1.6 and min(counts) > mean * 0.4
