//! The sandbox's money ledger: every movement of money any simulated provider performed.
//!
//! Balances are never stored separately: an account's balance *is* the sum of its ledger
//! entries, so `GET /_sandbox/balances` always agrees with `GET /_sandbox/ledger`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::Provider;

/// What caused a movement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Opening balance the sandbox gives an account at start (Blaaiz wallets, Lean bank accounts).
    Seed,
    /// Money arriving in a wallet (a paid Lumanu funding invoice).
    Deposit,
    /// A Blaaiz payout leaving a business wallet.
    Payout,
    /// A Lumanu payable paid from the balance, or a Lean payment leaving the payer's account.
    Payment,
    /// Money given back after a failed payout.
    Reversal,
}

/// Whether the movement added to or took from the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Adds `amount` to the account.
    Credit,
    /// Takes `amount` from the account.
    Debit,
}

/// One money movement.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Unique id of the movement.
    pub id: Uuid,
    /// Which simulated provider moved the money.
    pub provider: Provider,
    /// The account whose balance changed (Lumanu workspace id, Blaaiz wallet id, Lean bank
    /// account id).
    pub account: String,
    /// What kind of movement this is.
    pub kind: Kind,
    /// Credit or debit of `account`.
    pub direction: Direction,
    /// The provider object that caused it (payable, transaction, payment id).
    pub reference: String,
    /// The other side (payee email, bank account, destination id).
    pub counterparty: String,
    /// Always positive, integer minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Balance of `account` in `currency` after this movement.
    pub balance_after: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
}

#[cfg(test)]
impl Entry {
    /// The change this entry made to its account's balance.
    pub fn signed_amount(&self) -> i64 {
        match self.direction {
            Direction::Credit => self.amount,
            Direction::Debit => -self.amount,
        }
    }
}

/// A movement about to be recorded.
#[derive(Debug, Clone)]
pub struct Movement<'a> {
    /// Provider moving the money.
    pub provider: Provider,
    /// Account changed.
    pub account: &'a str,
    /// Movement kind.
    pub kind: Kind,
    /// Credit or debit.
    pub direction: Direction,
    /// Causing object id.
    pub reference: &'a str,
    /// Other side.
    pub counterparty: &'a str,
    /// Positive minor units.
    pub amount: i64,
    /// Currency.
    pub currency: &'a str,
}

/// A debit that would overdraw the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("insufficient funds: balance {available}, needed {needed}")]
pub struct InsufficientFunds {
    /// What the account can spend.
    pub available: i64,
    /// What was asked for.
    pub needed: i64,
}

/// Account key: (provider, account id, currency).
type AccountKey = (Provider, String, String);

/// Append-only list of movements plus per-account running balances.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: Vec<Entry>,
    balances: BTreeMap<AccountKey, i64>,
}

impl Ledger {
    /// Balance of an account (0 if it never moved).
    pub fn balance(&self, provider: Provider, account: &str, currency: &str) -> i64 {
        self.balances
            .get(&(provider, account.to_owned(), currency.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Records a movement. A debit fails, recording nothing, when the balance minus `reserved`
    /// would go below zero.
    pub fn record(
        &mut self,
        movement: Movement<'_>,
        reserved: i64,
    ) -> Result<&Entry, InsufficientFunds> {
        debug_assert!(movement.amount > 0, "ledger amounts are positive");
        let key = (
            movement.provider,
            movement.account.to_owned(),
            movement.currency.to_owned(),
        );
        let current = self.balances.get(&key).copied().unwrap_or(0);
        let after = match movement.direction {
            Direction::Credit => current + movement.amount,
            Direction::Debit => {
                let available = current - reserved;
                if available < movement.amount {
                    return Err(InsufficientFunds {
                        available,
                        needed: movement.amount,
                    });
                }
                current - movement.amount
            }
        };
        self.balances.insert(key, after);
        self.entries.push(Entry {
            id: Uuid::new_v4(),
            provider: movement.provider,
            account: movement.account.to_owned(),
            kind: movement.kind,
            direction: movement.direction,
            reference: movement.reference.to_owned(),
            counterparty: movement.counterparty.to_owned(),
            amount: movement.amount,
            currency: movement.currency.to_owned(),
            balance_after: after,
            at: Utc::now(),
        });
        let last = self.entries.len() - 1;
        Ok(&self.entries[last])
    }

    /// Every movement, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Every account that ever moved, with its balance.
    pub fn accounts(&self) -> impl Iterator<Item = (Provider, &str, &str, i64)> {
        self.balances
            .iter()
            .map(|((p, a, c), b)| (*p, a.as_str(), c.as_str(), *b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(direction: Direction, amount: i64) -> Movement<'static> {
        Movement {
            provider: Provider::Blaaiz,
            account: "w1",
            kind: Kind::Payout,
            direction,
            reference: "t1",
            counterparty: "x",
            amount,
            currency: "NGN",
        }
    }

    #[test]
    fn balances_are_sums_and_overdraft_is_refused() {
        let mut l = Ledger::default();
        l.record(mv(Direction::Credit, 1000), 0).expect("credit");
        l.record(mv(Direction::Debit, 400), 0).expect("debit");
        assert_eq!(
            l.record(mv(Direction::Debit, 500), 200).map(|e| e.amount),
            Err(InsufficientFunds {
                available: 400,
                needed: 500
            })
        );
        assert_eq!(l.balance(Provider::Blaaiz, "w1", "NGN"), 600);
        let sum: i64 = l.entries().iter().map(Entry::signed_amount).sum();
        assert_eq!(sum, 600);
        assert_eq!(l.entries().len(), 2);
    }
}
