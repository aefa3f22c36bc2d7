"""The console logger of every run: Dagster's usual lines, with a failure shown as its message alone unless
`verbose` (the stack trace is always in the run's event log, which the UI shows)."""

import logging
import sys

import dagster as dg
from tqdm import tqdm


class ConciseFormatter(logging.Formatter):
    def __init__(self, verbose: bool):
        super().__init__("%(asctime)s - %(levelname)s - %(message)s", "%H:%M:%S")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.verbose or record.levelno < logging.ERROR:
            return text
        # A failure event carries the error and its stack: keep the event's line and, for the step that failed,
        # the error's; the run's own failure line repeats it.
        lines = [line for line in text.split("\n\nStack Trace:")[0].splitlines() if line.strip()]
        kept = lines[:2] if "STEP_FAILURE" in lines[0] else lines[:1]
        return "\n".join(kept) + ("" if len(kept) == len(lines) else "  [--verbose: the full trace]")


class BarAwareHandler(logging.StreamHandler):
    """Writes each line through tqdm, which lifts the CLI's progress bars off the terminal for it and draws them again
    below: a log line and a bar never share a line. Without bars it is an ordinary write."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


@dg.logger(
    config_schema={
        "log_level": dg.Field(str, default_value="INFO", is_required=False),
        "verbose": dg.Field(bool, default_value=False, is_required=False, description="Print full stack traces."),
    },
    description="Console output: one clear line per failure (the full trace with verbose: true).",
)
def concise_console(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("dagster", level=init_context.logger_config["log_level"].upper())
    handler = BarAwareHandler(sys.stderr)
    handler.setFormatter(ConciseFormatter(init_context.logger_config["verbose"]))
    logger.addHandler(handler)
    return logger


@dg.definitions
def loggers() -> dg.Definitions:
    return dg.Definitions(loggers={"console": concise_console})
