"""Drive a live JCT with a Python client generated from openapi/openapi.yaml: enqueue -> get -> list, then the
CWOM: create a Repo and an Issue in it, change the Issue's status, read both back and the Issue's history.

Run by tests/contract/run.sh (and so by CI). Usage: python client_e2e.py BASE_URL
The generated package `jct_client` must be importable.
"""

import sys
import uuid

from jct_client import Client
from jct_client.api.audit import get_issue_history
from jct_client.api.cwom import create_issue, create_repo, get_issue, get_repo, list_issues, update_issue_status
from jct_client.api.tasks import enqueue_task, get_task, list_tasks
from jct_client.models import (
    EnqueueConflict,
    EnqueueCreated,
    Issue,
    IssueCreate,
    IssueResult,
    IssueType,
    ObjectKind,
    Operation,
    Ref,
    Repo,
    RepoCreate,
    RepoResult,
    RequestedBy,
    ActorKind,
    Source,
    Status,
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
    cwom(client)


def cwom(client: Client) -> None:
    slug = f"contractorg/cwom-{uuid.uuid4().hex[:12]}"
    repo = create_repo.sync_detailed(
        client=client, body=RepoCreate(name="CWOM through the client", slug=slug, source=Source(system="github"))
    )
    assert repo.status_code == 201, (repo.status_code, repo.content)
    assert isinstance(repo.parsed, RepoResult), repo.parsed
    repo_id = repo.parsed.repo.id
    assert repo.parsed.repo.kind == ObjectKind.REPO

    again = create_repo.sync_detailed(
        client=client, body=RepoCreate(name="The same slug", slug=slug, source=Source(system="github"))
    )
    assert again.status_code == 409, again.status_code

    fetched = get_repo.sync_detailed(repo_id, client=client)
    assert fetched.status_code == 200, fetched.status_code
    assert isinstance(fetched.parsed, Repo) and fetched.parsed.slug == slug, fetched.parsed

    issue = create_issue.sync_detailed(
        client=client,
        body=IssueCreate(repo=Ref(kind=ObjectKind.REPO, id=repo_id), title="Through the client", type_=IssueType.BUG),
    )
    assert issue.status_code == 201, (issue.status_code, issue.content)
    assert isinstance(issue.parsed, IssueResult), issue.parsed
    issue_id = issue.parsed.issue.id
    assert issue.parsed.issue.status == Status.PLANNED

    changed = update_issue_status.sync_detailed(issue_id, client=client, status=Status.READY)
    assert changed.status_code == 200, (changed.status_code, changed.content)
    assert changed.parsed.issue.status == Status.READY

    read = get_issue.sync_detailed(issue_id, client=client)
    assert isinstance(read.parsed, Issue) and read.parsed.status == Status.READY, read.parsed
    listed = list_issues.sync_detailed(client=client, repo_id=repo_id)
    assert [found.id for found in listed.parsed] == [issue_id], listed.parsed

    history = get_issue_history.sync_detailed(issue_id, client=client)
    assert history.status_code == 200, history.status_code
    assert [event.action for event in history.parsed.events][-1] == "status_changed", history.parsed
    print(f"client e2e ok: repo {repo_id} and issue {issue_id} created, changed, read back and audited")


if __name__ == "__main__":
    main(sys.argv[1])
