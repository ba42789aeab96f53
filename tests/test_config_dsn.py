"""cluster.store is judged by libpq's own parser, and no message about it shows its password: neither the
masked connection string nor libpq's reason, however the string is broken."""

from __future__ import annotations

import pytest

from healerd.config.dsn import dsn_problem, redact

PASSWORD = "Pw0rd-9Xq"

#: connection strings libpq cannot read or the store could not use, each with what the refusal says
REFUSED = {
    "postgresql://healerd:{pw}%zz@db/healerd": "invalid percent-encoded token",
    "postgresql://healerd:{pw}%00@db/healerd": "forbidden value %00",
    "postgresql://healerd:{pw} x@db/healerd": "unexpected spaces",
    "postgresql://healerd:{pw}@[::1/healerd": "IPv6 host address",
    "postgresql://healerd:{pw}@db/healerd?password": 'missing key/value separator "="',
    "postgresql://healerd:{pw}@db/healerd?passwd={pw}": 'invalid URI query parameter: "passwd"',
    "postgresql://healerd@db/healerd?password={pw}%zz": "invalid percent-encoded token",
    "postgresql://healerd:{pw}@db:99999/healerd": "names port '99999'",
    "postgresql://healerd:{pw}@db:{pw}/healerd": "not a port from 1 to 65535",
    "postgresql://healerd:{pw}@x@db/healerd": "holds an '@' in its host",
    "postgresql://healerd:ab/{pw}@db/healerd": "holds an '@' in its dbname",
    "host=db password='{pw}": "unterminated quoted string",
    "host=db password {pw}": 'missing "="',
    "host=db {pw}": 'missing "="',
    "host=db passwrd={pw}": 'invalid connection option "passwrd"',
    "host=db sslpassword={pw} port=x": "names port 'x'",
    "{pw}": "expected a PostgreSQL connection string (this is not shown",
    "mysql://healerd:{pw}@db/healerd": "not mysql://",
    # a list of servers without a read-write session: the first that answers could be a standby
    "postgresql://healerd:{pw}@db1:5432,db2:5433/healerd": (
        "names 2 servers with no target_session_attrs: a node could connect to a read-only standby and fail on every "
        "write; add ?target_session_attrs=read-write at the end"
    ),
    "postgresql://healerd@db1,db2,db3/healerd?sslmode=require&password={pw}": (
        "names 3 servers with no target_session_attrs"
    ),
    "postgresql://healerd@db1,db2/healerd?target_session_attrs=any": (
        "write target_session_attrs=read-write (or primary) instead of any"
    ),
    "host=db1,db2 port=5432,5433 password={pw}": "add target_session_attrs=read-write among the key=value pairs",
    "hostaddr=10.0.0.1,10.0.0.2 password={pw}": "names 2 servers with no target_session_attrs",
    "postgresql://healerd:{pw}@db/healerd?target_session_attrs=standby": "a server that may not accept writes",
    "postgresql://healerd:{pw}@db/healerd?application_name=" + "x" * 4100: "more than 4,096",
}

#: read by libpq as the store reads them, and shown masked
ACCEPTED = {
    "postgresql://healerd:{pw}@127.0.0.1:5432/healerd": "postgresql://healerd:***@127.0.0.1:5432/healerd",
    "postgres://healerd:{pw}@db/healerd?sslmode=require": "postgres://healerd:***@db/healerd?sslmode=require",
    "postgresql://healerd@db/healerd?password={pw}&sslmode=require": (
        "postgresql://healerd@db/healerd?password=***&sslmode=require"
    ),
    "postgresql://healerd:{pw}@db1:5432,db2:5433/healerd?target_session_attrs=read-write": (
        "postgresql://healerd:***@db1:5432,db2:5433/healerd?target_session_attrs=read-write"
    ),
    "postgresql://healerd@db1,db2/healerd?password={pw}&target_session_attrs=primary": (
        "postgresql://healerd@db1,db2/healerd?password=***&target_session_attrs=primary"
    ),
    "postgresql://healerd:{pw}@[::1]:5432,[::1]:5433/healerd?target_session_attrs=read-write": (
        "postgresql://healerd:***@[::1]:5432,[::1]:5433/healerd?target_session_attrs=read-write"
    ),
    "host=db1,db2 port=5432,5433 password={pw} target_session_attrs=read-write": (
        "host=db1,db2 port=5432,5433 password=*** target_session_attrs=read-write"
    ),
    "host=db dbname=healerd user=healerd password={pw}": "host=db dbname=healerd user=healerd password=***",
    "host=db password = '{pw} with\\' spaces' port=5432": "host=db password = *** port=5432",
    "host=db sslpassword={pw} sslmode=verify-full": "host=db sslpassword=*** sslmode=verify-full",
    "postgresql://healerd@db/healerd": "postgresql://healerd@db/healerd",
}


def leaked(text: str) -> list[str]:
    """The pieces of the password (4 characters and up) found in `text`."""
    return [PASSWORD[i : i + 4] for i in range(len(PASSWORD) - 3) if PASSWORD[i : i + 4] in text]


@pytest.mark.parametrize(("template", "says"), REFUSED.items(), ids=range(len(REFUSED)))
def test_a_connection_string_libpq_cannot_use_is_refused_without_its_password(template: str, says: str) -> None:
    dsn = template.replace("{pw}", PASSWORD)
    problem = dsn_problem(dsn)
    assert problem is not None and says in problem, problem
    assert leaked(problem) == [] and leaked(redact(dsn)) == [], problem


@pytest.mark.parametrize(("template", "masked"), ACCEPTED.items(), ids=range(len(ACCEPTED)))
def test_a_good_connection_string_is_accepted_and_shown_masked(template: str, masked: str) -> None:
    dsn = template.replace("{pw}", PASSWORD)
    assert dsn_problem(dsn) is None
    assert redact(dsn) == masked
