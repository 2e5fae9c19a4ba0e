//! Which outbox slots this relay publishes: each slot is owned by one relay session at a time
//! (a session advisory lock), and every live relay takes an equal share, so N replicas publish in
//! parallel while all rows of a key, which share a slot, still leave one publisher in order.
//!
//! Ownership lives on one dedicated connection, detached from the pool: a session lock must
//! never go back to the pool with its connection (another task would then hold it unknowingly),
//! and the relay's passes run on the same connection, so if it breaks the pass in flight fails
//! with it. A replica that dies, or loses that connection, releases its slots with the session;
//! the others take them at their next rebalance.

use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};

use crate::db::outbox::{self, SLOTS};

/// How often a relay recounts the live relays and takes or gives back slots. Also the longest
/// a slot whose owner died stays unowned while the others are busy or asleep.
pub(super) const REBALANCE_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Slots {
    conn: PgConnection,
    owned: Vec<i16>,
    balanced_at: Option<Instant>,
    /// Where this relay starts looking for free slots, so relays that join together do not all
    /// try the same ones first.
    start: i16,
}

impl Slots {
    /// Opens the relay's own connection and counts it among the running relays. Owns nothing yet.
    pub(super) async fn join(pool: &PgPool) -> sqlx::Result<Slots> {
        let mut conn = pool.acquire().await?.detach();
        outbox::join_relays(&mut conn).await?;
        let start = (uuid::Uuid::new_v4().as_bytes()[0] as i16) % SLOTS;
        Ok(Slots { conn, owned: Vec::new(), balanced_at: None, start })
    }

    pub(super) fn owned(&self) -> &[i16] {
        &self.owned
    }

    /// The connection the relay's passes run on.
    pub(super) fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Takes free slots up to this relay's share, `ceil(SLOTS / relays)`, or gives back what is
    /// over it; at most once per [`REBALANCE_EVERY`]. Called between passes only, so a slot is
    /// never given back while rows of it are in flight.
    pub(super) async fn rebalance(&mut self) -> sqlx::Result<()> {
        if self.balanced_at.is_some_and(|at| at.elapsed() < REBALANCE_EVERY) {
            return Ok(());
        }
        let relays = outbox::relay_members(&mut self.conn).await?.max(1);
        let share = (SLOTS as usize).div_ceil(relays as usize);
        while self.owned.len() > share {
            let slot = self.owned.pop().expect("more than a share");
            outbox::release_slot(&mut self.conn, slot).await?;
        }
        let mut candidate = self.start;
        for _ in 0..SLOTS {
            if self.owned.len() >= share {
                break;
            }
            if !self.owned.contains(&candidate) && outbox::try_take_slot(&mut self.conn, candidate).await? {
                self.owned.push(candidate);
            }
            candidate = (candidate + 1) % SLOTS;
        }
        self.balanced_at = Some(Instant::now());
        Ok(())
    }

    /// Ends the session, releasing every slot at once.
    pub(super) async fn leave(self) {
        use sqlx::Connection;
        let _ = self.conn.close().await;
    }
}
