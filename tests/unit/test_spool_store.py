"""The spool's files: spares received into where they stay, adoption, durability, sweeps."""

from __future__ import annotations

import os
from pathlib import Path

from router.engine.spare_files import SpareFiles, create_empty
from router.spool.queue import DeliveryQueue, InstanceRecord
from router.spool.store import Spool
from tests.support.peers import wait_for


def test_spares_are_made_in_one_shard_whose_directory_is_fsynced(tmp_path, monkeypatch):
    spool = Spool(tmp_path)
    spool.prepare()
    fsynced = []
    monkeypatch.setattr("router.spool.store.fsync_dir", fsynced.append)
    try:
        made = spool.make_spares(3)
        shards = {Path(path).parent for path, _ in made}
        assert len(shards) == 1 and shards.pop().parent == spool.objects
        assert all(os.path.getsize(path) == 0 for path, _ in made)
        assert fsynced == [os.path.dirname(made[0][0])]  # once, after all three exist
        for _, file in made:
            file.close()
    finally:
        spool.close()


def test_a_file_received_into_a_spare_stays_where_it_is_and_its_directory_is_not_fsynced_again(tmp_path, monkeypatch):
    spool = Spool(tmp_path)
    spool.prepare()
    try:
        ((path, file),) = spool.make_spares(1)
        file.write(b"received")
        directories = []
        monkeypatch.setattr(spool, "_fsync_dir", directories.append)
        adopted, entry_durable = spool.adopt(path)
        assert (adopted, entry_durable) == (Path(path), True)
        spool.make_durable(adopted, file.fileno(), entry_durable)
        assert directories == []
        file.close()
    finally:
        spool.close()


def test_a_file_received_elsewhere_is_moved_into_a_shard_whose_directory_is_fsynced(tmp_path, monkeypatch):
    spool = Spool(tmp_path)
    spool.prepare()
    try:
        received = spool.incoming / "received.dcm"
        received.write_bytes(b"received")
        adopted, entry_durable = spool.adopt(received)
        assert not received.exists() and adopted.parent.parent == spool.objects and not entry_durable
        directories = []
        monkeypatch.setattr(spool, "_fsync_dir", directories.append)
        spool.make_durable(adopted, entry_durable=entry_durable)
        assert directories == [str(adopted.parent)]
    finally:
        spool.close()


def test_the_spools_spares_are_made_in_its_shards_until_it_is_closed_and_nothing_is_process_wide(tmp_path):
    import tempfile

    before = tempfile.tempdir
    spool = Spool(tmp_path)
    spool.prepare()
    spool.spares.take_ready()
    wait_for(lambda: len(spool.spares.ready_paths) == spool.spares.depth, 10, message="spares")
    ready = spool.spares.ready_paths
    assert all(Path(p).parent.parent == spool.objects for p in ready)
    assert tempfile.tempdir == before
    spool.close()
    assert not any(Path(p).exists() for p in ready)
    spool.prepare()
    assert not spool.spares.closed
    spool.close()


def test_spares_left_by_a_crash_are_removed_at_the_next_start_and_spooled_instances_kept(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    try:
        (kept, kept_file), (left, left_file) = spool.make_spares(2)
        kept_file.write(b"an acknowledged instance")
        kept_file.close()
        left_file.close()  # the process dies here
        queue = DeliveryQueue(spool.queue_path)
        queue.enqueue(
            InstanceRecord(
                kept,
                "1.2.3",
                "1.2.840.10008.5.1.4.1.1.2",
                "1.2.840.10008.1.2.1",
                24,
                0.0,
                "ingest",
                "assoc1",
                "CT1",
                "127.0.0.1:1",
            ),
            [("default", "pacs")],
        )
        assert spool.sweep_unreferenced(queue.referenced_paths()) == 1
        assert os.path.exists(kept) and not os.path.exists(left)
        queue.close()
    finally:
        spool.close()


def test_a_non_empty_file_no_row_names_is_moved_to_orphans_never_deleted(tmp_path):
    """A lost queue database (a crash that cost its WAL, a restored backup) must not make the
    start-up sweep delete acknowledged instances."""
    spool = Spool(tmp_path)
    spool.prepare()
    try:
        (nameless, nameless_file), (spare, spare_file) = spool.make_spares(2)
        nameless_file.write(b"an acknowledged instance whose row was lost")
        nameless_file.close()
        spare_file.close()
        queue = DeliveryQueue(spool.queue_path)
        assert spool.sweep_unreferenced(queue.referenced_paths()) == 2
        assert not os.path.exists(nameless) and not os.path.exists(spare)
        (moved,) = list((tmp_path / "orphans").iterdir())
        assert moved.read_bytes() == b"an acknowledged instance whose row was lost"
        queue.close()
    finally:
        spool.close()


def test_transcoded_versions_stay_with_their_instance_and_go_without_it(tmp_path):
    """A version of a queued instance is kept; one whose instance no row names, and one a
    crash cut short while it was being written, are removed, never taken for orphans."""
    from pydicom.uid import JPEG2000Lossless

    from router.spool.variants import variant_path

    spool = Spool(tmp_path)
    spool.prepare()
    try:
        (kept, kept_file), (gone, gone_file) = spool.make_spares(2)
        for file in (kept_file, gone_file):
            file.write(b"an instance")
            file.close()
        queue = DeliveryQueue(spool.queue_path)
        queue.enqueue(InstanceRecord(kept, "1.2.3", "1.2", "1.2.840.10008.1.2.1", 11, 0.0), [("p", "pacs")])
        os.unlink(gone)
        versions = [variant_path(kept, JPEG2000Lossless), variant_path(gone, JPEG2000Lossless)]
        partial = Path(f"{variant_path(kept, JPEG2000Lossless)}.1a2b3c4d.part")
        for path in [*versions, partial]:
            path.write_bytes(b"a version")
        spool.sweep_unreferenced(queue.referenced_paths())
        assert versions[0].exists() and not versions[1].exists() and not partial.exists()
        assert not (tmp_path / "orphans").exists() or not list((tmp_path / "orphans").iterdir())
        spool.discard_instance(kept)
        assert not os.path.exists(kept) and not versions[0].exists()
        queue.close()
    finally:
        spool.close()


def test_copies_of_edited_versions_are_removed_at_start_up_and_their_received_file_kept(tmp_path):
    """Delivery writes the copies again from what is durable; one a power cut caught may not be
    whole, so none is kept, and none is taken for an orphan. The received file they need stays."""
    from router.spool.edited_copies import edited_copy_path
    from router.spool.queue import EditedByReference

    spool = Spool(tmp_path)
    spool.prepare()
    try:
        ((source, file),) = spool.make_spares(1)
        file.write(b"a received instance")
        file.close()
        queue = DeliveryQueue(spool.queue_path)
        needed, stale = edited_copy_path(source, 0), edited_copy_path(source, 1)
        edited = EditedByReference(b"header", source, 10, 19, None)
        record = InstanceRecord(needed, "2.5.1", "1.2", "1.2.840.10008.1.2.1", 15, 0.0, edited=edited)
        queue.enqueue(record, [("research", "archive")])
        for path in (needed, stale):
            Path(path).write_bytes(b"a copy")
        spool.sweep_unreferenced(queue.referenced_paths())
        assert os.path.exists(source) and not os.path.exists(needed) and not os.path.exists(stale)
        assert not (tmp_path / "orphans").exists() or not list((tmp_path / "orphans").iterdir())
        (delivery,) = queue.claim_due("archive", 1)
        assert delivery.path == needed and delivery.edited == edited
        queue.close()
    finally:
        spool.close()


def test_a_spare_given_back_is_emptied_handed_out_again_and_kept_only_up_to_the_depth(tmp_path):
    spares = SpareFiles(lambda count: [create_empty(str(tmp_path)) for _ in range(count)], tmp_path, depth=1)
    path, file = create_empty(str(tmp_path))
    file.write(b"an instance an edited version replaced")
    assert spares.give_back(path, file.fileno())
    file.close()  # the caller's own descriptor: the spare stays open through another
    assert os.path.getsize(path) == 0 and spares.ready_paths == {path}

    extra, extra_file = create_empty(str(tmp_path))
    assert not spares.give_back(extra, extra_file.fileno())  # depth 1 is ready: the caller removes it
    extra_file.close()

    taken, spare = spares.take_ready()
    assert taken == path
    spare.write(b"the next instance")
    spare.close()
    assert Path(path).read_bytes() == b"the next instance"
    spares.close()


def test_a_delivered_file_is_emptied_into_reuse_and_made_a_spare_again_before_any_new_file(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    try:
        ((path, file),) = spool.make_spares(1)
        file.write(b"a delivered instance")
        file.close()
        inode = os.stat(path).st_ino
        spool.discard_instance(path)
        assert not os.path.exists(path)
        (kept,) = list(spool.reuse.iterdir())
        assert kept.stat().st_size == 0 and kept.stat().st_ino == inode

        (spool.reuse / "not-a-file").mkdir()  # skipped: only files are taken
        made = spool.make_spares(2)
        inodes = [os.fstat(f.fileno()).st_ino for _, f in made]
        assert inodes[0] == inode and inodes[1] != inode  # the rest made new
        assert all(Path(p).parent.parent == spool.objects and os.path.getsize(p) == 0 for p, _ in made)
        assert list(spool.reuse.iterdir()) == [spool.reuse / "not-a-file"]
        for _, f in made:
            f.close()
    finally:
        spool.close()


def test_reuse_holds_a_bounded_number_of_files(tmp_path, monkeypatch):
    monkeypatch.setattr("router.spool.store.REUSE_LIMIT", 3)
    monkeypatch.setattr("router.spool.store.REUSE_CHECK_EVERY", 1)
    spool = Spool(tmp_path)
    spool.prepare()
    try:
        delivered = []
        for _, file in spool.make_spares(5):
            file.write(b"data")
            file.close()
            delivered.append(file.name)
        for path in delivered:
            spool.discard_instance(path)
        assert len(list(spool.reuse.iterdir())) == 3
        assert not any(os.path.exists(p) for p in delivered)  # the others removed

        monkeypatch.setattr("router.spool.store.REUSE_LIMIT", 1)
        (spool.reuse / "not-a-file").mkdir()
        spool.sweep_unreferenced(set())  # at start-up: trimmed to the limit, what is not a file left alone
        assert len([p for p in spool.reuse.iterdir() if p.is_file()]) == 1
        assert (spool.reuse / "not-a-file").is_dir()
    finally:
        spool.close()
