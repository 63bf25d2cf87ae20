import flyte
import flyte.report

env = flyte.TaskEnvironment(name="reports")


@env.task(report=True)
async def summarize(n: int) -> int:
    """Sums and reports."""
    flyte.report.log(f"<h1>Sum of {n}</h1><p>total {sum(range(n))}</p>")
    await flyte.report.flush.aio()
    return sum(range(n))
