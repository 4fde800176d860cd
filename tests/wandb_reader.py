"""Read an offline W&B run back with wandb's own protobuf records (the .wandb file is a LevelDB-style log)."""

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
    """{'config': {key: value}, 'history': [{key: value}, ...]} of one offline-run-* folder."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    config, history = {}, []
    for raw in _chunks(path.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            for item in rec.run.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item})
    config = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()}
    return {"config": config, "history": history}
