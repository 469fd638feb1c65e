"""Copies a batchscore registry with every packed model written out as its own object.

    python scripts/bench/unpack_registry.py REGISTRY OUT

Registries written before packs held one object per model (`models/KEY/VERSION.f4.bsm`); this
makes one from a packed registry, with the same model files, so that scoring both shows what
packs change (scripts/bench-azure.sh counts the requests). Standard library only.
"""

import json
import os
import sys


def main(argv):
    if len(argv) != 3:
        raise SystemExit(__doc__)
    src, out = argv[1], argv[2]
    with open(os.path.join(src, "index.json"), encoding="utf-8") as f:
        index = json.load(f)
    os.makedirs(out)
    packs = {}
    for entry in index["models"]:
        offset = entry.pop("offset", None)
        if offset is None:
            data = open(os.path.join(src, entry["path"]), "rb").read()
        else:
            if entry["path"] not in packs:
                packs[entry["path"]] = open(os.path.join(src, entry["path"]), "rb").read()
            data = packs[entry["path"]][offset:offset + entry["size"]]
        if len(data) != entry["size"]:
            raise SystemExit(f"model {entry['key']}: {len(data)} bytes, the index says {entry['size']}")
        fmt = int.from_bytes(data[8:12], "little")
        entry["path"] = f"models/{entry['key']}/{entry['version']}.f{fmt}.bsm"
        os.makedirs(os.path.dirname(os.path.join(out, entry["path"])), exist_ok=True)
        with open(os.path.join(out, entry["path"]), "wb") as f:
            f.write(data)
    text = json.dumps(index, indent=2)
    with open(os.path.join(out, "index.json"), "w", encoding="utf-8") as f:
        f.write(text)
    os.makedirs(os.path.join(out, "_index"))
    with open(os.path.join(out, "_index", f"{index.get('generation', 0):020}.json"), "w",
              encoding="utf-8") as f:
        f.write(text)
    print(f"{len(index['models'])} models from {len(packs)} packs written one object each to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
