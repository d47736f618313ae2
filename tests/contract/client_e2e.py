"""Drive a live JCT with a Python client generated from openapi/openapi.yaml: enqueue -> get -> list.

Run by tests/contract/run.sh (and so by CI). Usage: python client_e2e.py BASE_URL
The generated package `jct_client` must be importable.
"""

import sys
import uuid

from jct_client import Client
from jct_client.api.tasks import enqueue_task, get_task, list_tasks
from jct_client.models import (
    EnqueueConflict,
    EnqueueCreated,
    Operation,
    RequestedBy,
    ActorKind,
    Target,
    TaskCreateV1,
    TaskStatus,
)


def main(base_url: str) -> None:
    client = Client(base_url=base_url, raise_on_unexpected_status=True)
    key = f"client-e2e-{uuid.uuid4()}"
    body = TaskCreateV1(
        idempotency_key=key,
        requested_by=RequestedBy(kind=ActorKind.AGENT, id="python-client"),
        objective="Exercise the generated client end to end",
        operation=Operation.DOCS,
        target=Target(repo="ContractOrg/Client-Test.git"),
    )

    created = enqueue_task.sync_detailed(client=client, body=body, x_trace_id="client-e2e")
    assert created.status_code == 201, (created.status_code, created.content)
    assert isinstance(created.parsed, EnqueueCreated), created.parsed
    task_id = created.parsed.task_id
    assert created.parsed.task.target.repo == "contractorg/client-test", created.parsed.task.target
    # `jct up` runs a worker too, so the task may already be claimed by the time the answer is read back.
    assert created.parsed.task.status in (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.COMPLETED)
    assert created.parsed.trace_id == "client-e2e"

    again = enqueue_task.sync_detailed(client=client, body=body)
    assert again.status_code == 409, again.status_code
    assert isinstance(again.parsed, EnqueueConflict)
    assert again.parsed.task_id == task_id

    fetched = get_task.sync_detailed(client=client, task_id=task_id)
    assert fetched.status_code == 200, fetched.status_code
    assert fetched.parsed.task_id == task_id
    assert fetched.parsed.objective == "Exercise the generated client end to end"

    missing = get_task.sync_detailed(client=client, task_id="not-a-task")
    assert missing.status_code == 404, missing.status_code

    listed = list_tasks.sync_detailed(client=client, target_repo="contractorg/client-test", limit=10)
    assert listed.status_code == 200, listed.status_code
    assert [task.task_id for task in listed.parsed] == [task_id], listed.parsed
    print(f"client e2e ok: task {task_id} enqueued, replayed (409), fetched and listed")


if __name__ == "__main__":
    main(sys.argv[1])
