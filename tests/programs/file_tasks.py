import dataclasses
import tempfile
from pathlib import Path

import flyte
from flyte.io import Dir, File

env = flyte.TaskEnvironment(name="files")


@dataclasses.dataclass
class Bundle:
    label: str
    data: File


@env.task
async def make(text: str) -> File:
    d = tempfile.mkdtemp()
    p = Path(d) / "made.txt"
    p.write_text(text)
    return await File.from_local(p)


@env.task
async def make_dir(n: int) -> Dir:
    d = tempfile.mkdtemp()
    for i in range(n):
        (Path(d) / f"f{i}.txt").write_text(str(i))
    return await Dir.from_local(d)


@env.task
async def make_bundle(text: str) -> Bundle:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    return Bundle(label="b", data=await File.from_local(f.name))


@env.task
async def vanishing(text: str) -> File:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "gone.txt"
        p.write_text(text)
        return await File.from_local(p)


@env.task
async def read(f: File) -> str:
    async with f.open("rb") as fh:
        return bytes(await fh.read()).decode()


@env.task
async def count(d: Dir) -> int:
    n = 0
    async for _ in d.walk():
        n += 1
    return n


@env.task
async def pipeline(text: str) -> str:
    f = await make(text)
    d = await make_dir(3)
    b = await make_bundle(text + "!")
    return f"{await read(f)} {await count(d)} {await read(b.data)}"
