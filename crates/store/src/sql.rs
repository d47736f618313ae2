//! SQL statements as values: their text and typed parameters, run on an sqlx connection or sent in a pipeline.
//!
//! The append's own writes and the inline read models' writes are built as [`Statement`]s, so one definition of
//! each serves both ways it runs: one statement at a time on an sqlx connection ([`Statement::execute`], the
//! projectors and the append's slower path), or queued behind each other on the appender's pipelined connection
//! and answered together (`crate::pipeline`). Every parameter is a [`Param`], a typed value both drivers encode the
//! same way (binary, as PostgreSQL stores it).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgArguments;
use sqlx::{PgConnection, Postgres};
use tokio_postgres::types::{to_sql_checked, IsNull, Json, ToSql, Type};

/// One SQL statement with its parameters, borrowed from what it writes (`'a`) where it can be.
#[derive(Debug)]
pub struct Statement<'a> {
    /// The SQL text, `$1`... for the parameters.
    pub sql: &'static str,
    pub params: Vec<Param<'a>>,
    /// How PostgreSQL plans it.
    pub planning: Planning,
    /// What it does, for errors: "insert tasks".
    pub what: &'static str,
}

impl<'a> Statement<'a> {
    /// A statement prepared once per connection ([`Planning::Cached`]).
    pub fn prepared(what: &'static str, sql: &'static str, params: Vec<Param<'a>>) -> Statement<'a> {
        Statement { sql, params, planning: Planning::Cached, what }
    }

    /// A statement planned for its parameters at every execution, never prepared ([`Planning::EachTime`]).
    pub fn planned_each_time(what: &'static str, sql: &'static str, params: Vec<Param<'a>>) -> Statement<'a> {
        Statement { sql, params, planning: Planning::EachTime, what }
    }

    /// A statement whose every table is read by an index whatever its parameters ([`Planning::Generic`]).
    pub fn generic(what: &'static str, sql: &'static str, params: Vec<Param<'a>>) -> Statement<'a> {
        Statement { sql, params, planning: Planning::Generic, what }
    }

    /// Whether a connection prepares it once and keeps it.
    pub fn is_prepared(&self) -> bool {
        self.planning != Planning::EachTime
    }

    /// Runs it on `conn`; returns the rows it affected.
    pub async fn execute(&self, conn: &mut PgConnection) -> anyhow::Result<u64> {
        let done = self.query().execute(conn).await.map_err(|error| anyhow::Error::new(error).context(self.what))?;
        Ok(done.rows_affected())
    }

    /// Runs it on `conn` and returns its rows.
    pub async fn fetch_all(&self, conn: &mut PgConnection) -> anyhow::Result<Vec<sqlx::postgres::PgRow>> {
        self.query().fetch_all(conn).await.map_err(|error| anyhow::Error::new(error).context(self.what))
    }

    /// The sqlx query with every parameter bound.
    fn query(&self) -> Query<'_> {
        // On sqlx connections (projectors' catch-up, rebuilds, the append's step-by-step path) batches can be long
        // and nothing forces a generic plan, so a `Generic` statement is planned for its parameters there.
        let persistent = self.planning == Planning::Cached;
        self.params.iter().fold(sqlx::query(self.sql).persistent(persistent), |query, param| param.bind(query))
    }

    /// The parameters' PostgreSQL types, in order.
    pub(crate) fn types(&self) -> Vec<Type> {
        self.params.iter().map(Param::pg_type).collect()
    }
}

/// How PostgreSQL plans a [`Statement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planning {
    /// Prepared once per connection and its plan reused: PostgreSQL plans the first five executions for their
    /// parameters, then keeps a generic plan if it does not look dearer than those.
    Cached,
    /// Planned for its parameters at every execution, never prepared: for statements whose best plan depends on
    /// how many rows they bring (thousands in a catch-up, a few in an append).
    EachTime,
    /// Written so that an index serves every table it reads whatever its arrays hold (each join to a batch's
    /// array has a redundant `= any($n)` on the table's key beside it), so one plan fits every batch. On the
    /// appender's pipelined connection it is prepared and always run with its generic plan, made with sequential
    /// scans disabled ([`GENERIC_PLAN_ON`], sent once before a batch's `Generic` statements, which go last):
    /// PostgreSQL would otherwise plan it at every batch (its generic plan looks dearer to it than the custom ones),
    /// or, on a table it has not analysed, make a generic plan that scans the table. Elsewhere it is planned for its
    /// parameters every time, as [`Planning::EachTime`].
    Generic,
}

/// Sent before the [`Planning::Generic`] statements of a pipelined transaction, which go last, just before `commit`
/// (which ends these settings): their generic plans, never a sequential scan.
pub const GENERIC_PLAN_ON: &str = "set local plan_cache_mode = force_generic_plan; set local enable_seqscan = off";

/// A statement parameter: a scalar, or an array that `unnest` turns into rows.
#[derive(Debug, Clone)]
pub enum Param<'a> {
    Int8(i64),
    Text(&'a str),
    Bytea(&'a [u8]),
    Int4s(Vec<i32>),
    Int8s(Vec<i64>),
    Bools(Vec<bool>),
    Texts(Vec<&'a str>),
    OptionalTexts(Vec<Option<&'a str>>),
    OwnedTexts(Vec<String>),
    OptionalOwnedTexts(Vec<Option<String>>),
    Timestamps(Vec<DateTime<Utc>>),
    OptionalTimestamps(Vec<Option<DateTime<Utc>>>),
    Jsonbs(Vec<&'a Value>),
    OptionalJsonbs(Vec<Option<&'a Value>>),
    OwnedJsonbs(Vec<Value>),
    /// Lists of strings, each as a `jsonb` array (`jsonb[]`): ragged lists in one parameter.
    StringListsAsJsonb(Vec<&'a [String]>),
    Byteas(Vec<&'a [u8]>),
}

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

impl Param<'_> {
    /// The parameter's PostgreSQL type.
    pub fn pg_type(&self) -> Type {
        match self {
            Param::Int8(_) => Type::INT8,
            Param::Text(_) => Type::TEXT,
            Param::Bytea(_) => Type::BYTEA,
            Param::Int4s(_) => Type::INT4_ARRAY,
            Param::Int8s(_) => Type::INT8_ARRAY,
            Param::Bools(_) => Type::BOOL_ARRAY,
            Param::Texts(_) | Param::OptionalTexts(_) | Param::OwnedTexts(_) | Param::OptionalOwnedTexts(_) => {
                Type::TEXT_ARRAY
            }
            Param::Timestamps(_) | Param::OptionalTimestamps(_) => Type::TIMESTAMPTZ_ARRAY,
            Param::Jsonbs(_) | Param::OptionalJsonbs(_) | Param::OwnedJsonbs(_) | Param::StringListsAsJsonb(_) => {
                Type::JSONB_ARRAY
            }
            Param::Byteas(_) => Type::BYTEA_ARRAY,
        }
    }

    fn bind<'q>(&'q self, query: Query<'q>) -> Query<'q> {
        match self {
            Param::Int8(value) => query.bind(*value),
            Param::Text(value) => query.bind(*value),
            Param::Bytea(value) => query.bind(*value),
            Param::Int4s(values) => query.bind(values),
            Param::Int8s(values) => query.bind(values),
            Param::Bools(values) => query.bind(values),
            Param::Texts(values) => query.bind(values),
            Param::OptionalTexts(values) => query.bind(values),
            Param::OwnedTexts(values) => query.bind(values),
            Param::OptionalOwnedTexts(values) => query.bind(values),
            Param::Timestamps(values) => query.bind(values),
            Param::OptionalTimestamps(values) => query.bind(values),
            Param::Jsonbs(values) => query.bind(values),
            Param::OptionalJsonbs(values) => query.bind(values),
            Param::OwnedJsonbs(values) => query.bind(values),
            Param::StringListsAsJsonb(values) => {
                query.bind(values.iter().map(|list| sqlx::types::Json(*list)).collect::<Vec<_>>())
            }
            Param::Byteas(values) => query.bind(values),
        }
    }
}

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Int8(value) => value.to_sql(ty, out),
            Param::Text(value) => value.to_sql(ty, out),
            Param::Bytea(value) => value.to_sql(ty, out),
            Param::Int4s(values) => values.to_sql(ty, out),
            Param::Int8s(values) => values.to_sql(ty, out),
            Param::Bools(values) => values.to_sql(ty, out),
            Param::Texts(values) => values.to_sql(ty, out),
            Param::OptionalTexts(values) => values.to_sql(ty, out),
            Param::OwnedTexts(values) => values.to_sql(ty, out),
            Param::OptionalOwnedTexts(values) => values.to_sql(ty, out),
            Param::Timestamps(values) => values.to_sql(ty, out),
            Param::OptionalTimestamps(values) => values.to_sql(ty, out),
            Param::Jsonbs(values) => values.to_sql(ty, out),
            Param::OptionalJsonbs(values) => values.to_sql(ty, out),
            Param::OwnedJsonbs(values) => values.to_sql(ty, out),
            Param::StringListsAsJsonb(values) => {
                values.iter().map(|list| Json(*list)).collect::<Vec<_>>().to_sql(ty, out)
            }
            Param::Byteas(values) => values.to_sql(ty, out),
        }
    }

    /// Checked per parameter by the encoders each variant delegates to.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
