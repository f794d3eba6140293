"""Benchmark: ``sarco export`` of a run against the run's own time, a silent PACS, and TCP_NODELAY.

Export: a synthetic cohort (CT, small size) is run (:func:`engine.batch.pipeline.run`, local scheduler,
statistics and report off: a conservative run time) and then exported in the same process
(:func:`engine.exporters.export_run`, objects built on a local Dask cluster when there are enough
series, delivered over ``pacs.associations`` associations): DICOM-SEG, TID 1500 SR and QA Secondary
Capture per patient to a folder, then by C-STORE to a local Orthanc when one is installed, then to
a folder again built inline in this process (what the cluster buys). The row gives the times and
``export_over_run`` / ``pacs_over_run`` / ``inline_over_run`` (goal: 0.25 or less at 200 patients).

Silent PACS: the same run exported to a port that accepts connections and never answers, with the
default timeouts (``--quick``: 1 s): the seconds until the breaker declared it down (goal: under
2 minutes whatever the batch size).

TCP_NODELAY: the cohort's first CT series (small files) is C-STOREd over one association, per store
the median of the stores' wall times, with and without TCP_NODELAY on our socket, to pynetdicom's own
storage SCP in this process and to Orthanc with and without TCP_NODELAY on its side (DCMTK reads it
from the environment). The first store of each association is left out (slow start).

Run ``python -m bench --only export [--quick] [--export-patients N] [--export-size clinical]``.
``--quick``: 3 patients (a smoke size); full: 200; ``--export-patients``: N; ``--export-size``: the
synthetic CT's matrix (``small`` 256², the default, or ``clinical`` 512²).
"""

from __future__ import annotations

import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

from ._common import cohort_manifest, default_cache_dir, ratio


def _run_and_export(manifest: Path, work: Path, pacs_address: str | None, scheduler: str | None = None) -> dict:
    from engine.batch.pipeline import run
    from engine.config import load_config
    from engine.exporters import export_run

    config = load_config(overrides={"run": {"backend": "cpu", "report": False, "qa": True, "scheduler": scheduler},
                                    "stats": {"enabled": False}})
    start = time.perf_counter()
    result = run(manifest, out_dir=work / "run", config=config)
    run_s = time.perf_counter() - start
    start = time.perf_counter()
    exported = export_run(work / "run", dicom_dir=work / "dicom", manifest=manifest)
    folder_s = time.perf_counter() - start
    row = {"patients": result.n_patients, "run_s": round(run_s, 2), "export_folder_s": round(folder_s, 2),
           "export_over_run": round(ratio(folder_s, run_s), 3), "exported": exported.done, "failed": exported.failed}
    if pacs_address is not None:
        start = time.perf_counter()
        stored = export_run(work / "run", pacs=pacs_address, calling_aet="SARCO", manifest=manifest)
        pacs_s = time.perf_counter() - start
        row.update({"export_pacs_s": round(pacs_s, 2), "pacs_over_run": round(ratio(pacs_s, run_s), 3),
                    "stored": stored.done})
    start = time.perf_counter()  # the same folder export built in this process: what the cluster buys
    export_run(work / "run", dicom_dir=work / "dicom_inline", scheduler="inline", manifest=manifest)
    inline_s = time.perf_counter() - start
    row.update({"export_folder_inline_s": round(inline_s, 2), "inline_over_run": round(ratio(inline_s, run_s), 3)})
    return row


def _silent_peer_row(run_dir: Path, manifest: Path, quick: bool) -> dict:
    """Seconds an export to a peer that accepts and never answers takes to give up (breaker, default timeouts)."""
    from engine.config import PacsConfig
    from engine.exporters import export_run
    from tests.faultpeers import silent_peer

    settings = PacsConfig(timeout_s=1.0, connect_timeout_s=1.0) if quick else PacsConfig()
    with silent_peer() as port:
        start = time.perf_counter()
        result = export_run(run_dir, pacs=f"ORTHANC@127.0.0.1:{port}", settings=settings, manifest=manifest)
        seconds = time.perf_counter() - start
    statuses = result.log["status"].value_counts().to_dict()
    return {"part": "silent PACS", "patients": int(result.log["patient_id"].nunique()), "timeout_s": settings.timeout_s,
            "breaker_failures": settings.breaker_failures, "give_up_s": round(seconds, 2),
            "not_attempted": int(statuses.get("not attempted", 0)), "down": bool(result.down)}


def _store_ms(port: int, datasets: list, client_nodelay: bool) -> float:
    from pynetdicom import AE

    ae = AE(ae_title="SARCO")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="ORTHANC")
    if not assoc.is_established:
        raise RuntimeError(f"no association with 127.0.0.1:{port}")
    if client_nodelay:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    try:
        for dataset in datasets:
            start = time.perf_counter()
            status = assoc.send_c_store(dataset)
            times.append(time.perf_counter() - start)
            if not status or status.Status != 0:
                raise RuntimeError(f"C-STORE refused: {status}")
    finally:
        assoc.release()
    return 1000 * statistics.median(times[1:])


def _nodelay_rows(series_dir: Path, orthanc: bool) -> list[dict]:
    import pydicom
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    datasets = [pydicom.dcmread(str(p)) for p in sorted(series_dir.iterdir()) if p.is_file()]
    rows = []
    scp = AE(ae_title="ORTHANC")
    scp.supported_contexts = AllStoragePresentationContexts
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    try:
        for nodelay in (False, True):
            rows.append({"peer": "pynetdicom storescp", "client_nodelay": nodelay,
                         "ms_per_store": round(_store_ms(port, datasets, nodelay), 1), "stores": len(datasets)})
    finally:
        server.shutdown()
    if orthanc:
        from tests.pacs import start_orthanc

        for server_nodelay in (False, True):
            storage = Path(tempfile.mkdtemp(prefix="sarco-bench-orthanc-"))
            pacs = start_orthanc(storage, server_nodelay=server_nodelay)
            try:
                for nodelay in (False, True):
                    rows.append({"peer": f"Orthanc (its TCP_NODELAY={int(server_nodelay)})", "client_nodelay": nodelay,
                                 "ms_per_store": round(_store_ms(pacs.dicom_port, datasets, nodelay), 1),
                                 "stores": len(datasets)})
            finally:
                pacs.stop()
                shutil.rmtree(storage, ignore_errors=True)
    return rows


def run(quick: bool = False, *, n_patients: int | None = None, cache_dir: str | Path | None = None,
        scheduler: str | None = None, orthanc: bool | None = None, size: str = "small") -> list[dict]:
    """Export vs run on ``n_patients`` (quick 3, full 200); C-STORE latency with and without TCP_NODELAY.

    ``scheduler``: the run's (default a local cluster); ``orthanc``: store to a local Orthanc too
    (default: when one is installed); ``size``: the synthetic CT's (``small``: 256 x 256 at 1.4-1.5 mm,
    ``clinical``: 512 x 512 at 0.68-0.78 mm, what an imaging core's CT is). The CI smoke test runs
    ``inline`` without Orthanc.
    """
    from tests.pacs import orthanc_binary, start_orthanc

    n_patients = n_patients or (3 if quick else 200)
    manifest = cohort_manifest(cache_dir or default_cache_dir(), size, n_patients)
    work = Path(tempfile.mkdtemp(prefix="sarco-bench-export-"))
    ct_only = work / "manifest_ct.csv"
    import pandas as pd

    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table = table[["patient_id", "label", "split", "ct_image", "ct_roi"]].copy()
    table["ct_image"] = [str((manifest.parent / p).resolve()) for p in table["ct_image"]]
    table["ct_roi"] = [str((manifest.parent / p).resolve()) for p in table["ct_roi"]]
    table.to_csv(ct_only, index=False)
    orthanc = orthanc_binary() is not None if orthanc is None else orthanc
    (work / "orthanc").mkdir()
    pacs = start_orthanc(work / "orthanc") if orthanc else None
    try:
        row = _run_and_export(ct_only, work, pacs.address if pacs else None, scheduler)
        rows = [{"part": "export vs run", "size": size, **row}, _silent_peer_row(work / "run", ct_only, quick)]
        rows += [{"part": "C-STORE latency", **r} for r in _nodelay_rows(Path(table["ct_image"].iloc[0]), orthanc)]
        return rows
    finally:
        if pacs is not None:
            pacs.stop()
        shutil.rmtree(work, ignore_errors=True)
