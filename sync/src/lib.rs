//! The sync engine (SPEC section 7), optional and off until configured.
//!
//! Today this crate holds only the boundary: the node already writes every change that must
//! reach the central store (task state, alerts, contexts) to the `outbox` table in the same
//! SQLite transaction as the change itself, so nothing written before sync exists is lost.
//! The stages that drain it (outbox reader, batcher, request builder, PostgREST client, driver)
//! will live here, each in its own module, and only this crate will know PostgREST's wire
//! format.
