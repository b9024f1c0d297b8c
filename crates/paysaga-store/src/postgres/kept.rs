//! Connections the hot path keeps between its statements.
//!
//! sqlx's pool pings every connection given back to it (a `Sync` round trip, in a task of
//! its own) before another caller may take it. For a statement that commits by itself (a
//! step's commit, a claim, a start) that is a second round trip to the server for every
//! statement: one more wake-up of a server process and of the worker, on the database's
//! cores. The hot path instead keeps a few connections checked out of the pool and reuses
//! them with no ping in between; sqlx still drains anything a connection owes before its
//! next statement.
//!
//! A connection goes back to the pool (and its ping) when its statement failed other than
//! with the server's answer (an I/O or protocol error; then every kept connection goes back,
//! as they may all have been cut by a restart of the server), when its caller was dropped
//! mid-statement, when the keeper is full, when it was unused for
//! [`super::PING_WHEN_IDLE_FOR`] (the pool pings such a connection before it hands it out
//! again, as it does for its own idle connections), or when it was kept for [`TURN`] (so
//! that the pool's own age limit still retires it). No SQL here.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPool;
use sqlx::Postgres;

/// At most this many connections kept, and at most a quarter of the pool: the rest of the
/// pool stays for everything else (operators' queries, event deliveries, transactions).
const MOST: u32 = 4;

/// A connection is kept this long at most before it goes back to the pool once.
const TURN: Duration = Duration::from_secs(600);

/// A kept connection, since when it is kept and when it was last used.
#[derive(Debug)]
struct Held {
    conn: PoolConnection<Postgres>,
    since: Instant,
    used: Instant,
}

/// A few connections checked out of a pool for the hot path's one-statement transactions.
#[derive(Debug)]
pub(super) struct Kept {
    conns: Mutex<Vec<Held>>,
    most: usize,
}

impl Kept {
    /// For `pool`: keeps up to a quarter of its connections, at most [`MOST`] (none for a
    /// pool of fewer than four).
    pub(super) fn for_pool(pool: &PgPool) -> Kept {
        let most = (pool.options().get_max_connections() / 4).min(MOST);
        Kept {
            conns: Mutex::new(Vec::new()),
            most: most as usize,
        }
    }

    /// A kept connection used within [`super::PING_WHEN_IDLE_FOR`], else one of the pool's.
    /// Hand it back with [`Kept::give_back`] once its statement has answered. Every kept
    /// connection unused that long (or kept for [`TURN`]) goes back to the pool, which pings
    /// it before handing it out again.
    pub(super) async fn take(&self, pool: &PgPool) -> Result<Taken, sqlx::Error> {
        let (fresh, stale) = {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            let stale: Vec<Held> = conns
                .extract_if(.., |held| {
                    held.used.elapsed() >= super::PING_WHEN_IDLE_FOR || held.since.elapsed() >= TURN
                })
                .collect();
            (conns.pop(), stale)
        };
        // Outside the lock: giving a connection back spawns a task.
        drop(stale);
        Ok(match fresh {
            Some(held) => Taken {
                conn: held.conn,
                since: held.since,
            },
            None => Taken {
                conn: pool.acquire().await?,
                since: Instant::now(),
            },
        })
    }

    /// Keeps `taken` after a statement that `failed` (or not), unless the connection may be
    /// broken or enough are kept already. Broken: any error other than the server's answer
    /// (I/O, protocol, a timeout), and the server's answers that end or condemn the session
    /// (SQLSTATE class 08, connection exception; class 57, operator intervention, such as
    /// `pg_terminate_backend` or a shutdown).
    pub(super) fn give_back(&self, taken: Taken, failed: Option<&sqlx::Error>) {
        let sound = match failed {
            None => true,
            Some(sqlx::Error::Database(e)) => !e
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
            Some(_) => false,
        };
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if sound && conns.len() < self.most {
            conns.push(Held {
                conn: taken.conn,
                since: taken.since,
                used: Instant::now(),
            });
            return;
        }
        // A broken one may mean the server restarted and every kept connection is dead: all
        // go back to the pool, whose ping sorts them, rather than fail a statement each.
        let others = if sound {
            Vec::new()
        } else {
            std::mem::take(&mut *conns)
        };
        // Outside the lock, as in `take`.
        drop(conns);
        drop((others, taken));
    }

    /// How many connections are kept now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A connection taken for one statement: give it back with [`Kept::give_back`]; dropped
/// instead (its caller dropped mid-statement, say), it goes back to the pool.
#[derive(Debug)]
pub(super) struct Taken {
    conn: PoolConnection<Postgres>,
    since: Instant,
}

impl std::ops::Deref for Taken {
    type Target = sqlx::PgConnection;
    fn deref(&self) -> &sqlx::PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Taken {
    fn deref_mut(&mut self) -> &mut sqlx::PgConnection {
        &mut self.conn
    }
}
