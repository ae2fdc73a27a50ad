"""Errors the user can act on. The CLI prints them without a traceback and exits with code 2."""


class UserError(ValueError):
    """Bad input: a config field, a data record, a path. The message says what and how to fix."""


class ConfigError(UserError):
    """One or more config fields are invalid; `problems` lists every one of them."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


class DataError(UserError):
    """A bad edit record; names the file, the record index and the field."""

    def __init__(self, path: str, index: int | None, field: str | None, problem: str):
        self.path, self.index, self.field = path, index, field
        where = path if index is None else f"{path}: record {index}"
        if field:
            where += f": field '{field}'"
        super().__init__(f"{where}: {problem}")
