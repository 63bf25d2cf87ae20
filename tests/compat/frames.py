import base64
import json

import flyte
import pandas as pd
from flyte.io import DataFrame

env = flyte.TaskEnvironment(name="compat_frames")


@env.task
async def describe(df: pd.DataFrame) -> str:
    return base64.b64encode(json.dumps({"rows": len(df), "cols": list(df.columns),
                                        "total": float(df.select_dtypes("number").sum().sum())}).encode()).decode()


@env.task
async def describe_raw(frame: DataFrame) -> str:
    df = await frame.open(pd.DataFrame).all()
    return base64.b64encode(json.dumps({"rows": len(df), "cols": list(df.columns)}).encode()).decode()


@env.task
async def make_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"x": list(range(n)), "y": [i * 2 for i in range(n)]})


@env.task
async def frame_pipeline(n: int) -> str:
    df = await make_frame(n)
    return await describe(df)
