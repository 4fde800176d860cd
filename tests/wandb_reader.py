"""Read an offline W&B run back with wandb's own protobuf records (the .wandb file is a LevelDB-style log).

wandb 0.31 has no Python reader for .wandb files any more (`wandb sync` reads them in its Go core), so the
framing is parsed here and every record is decoded with wandb's own `wandb_internal_pb2.Record`."""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version


def _chunks(data: bytes):
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            yield pending + chunk


def read_offline_run(run_dir: Path) -> dict:
    """{'config': {key: value}, 'history': [{key: value}, ...], 'summary': {key: value}, 'job_type': str, 'name': str,
    'tags': [str], 'artifacts': [{'name', 'type', 'digest', 'used' (an input of this run), 'files', 'metadata'}]} of
    one offline-run-* folder."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    config, history, summary, artifacts, job_type, name, tags = {}, [], {}, [], None, None, []
    for raw in _chunks(path.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            job_type, name, tags = rec.run.job_type, rec.run.display_name, list(rec.run.tags)
            for item in rec.run.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "artifact":
            a = rec.artifact
            files = sorted(e.path for e in a.manifest.contents)
            artifacts.append({"name": a.name, "type": a.type, "digest": a.digest, "used": a.use_after_commit,
                              "files": files, "metadata": json.loads(a.metadata or "{}")})  # fmt: skip
    config = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()}
    return {"config": config, "history": history, "summary": summary, "artifacts": artifacts, "job_type": job_type,
            "name": name, "tags": tags}  # fmt: skip
