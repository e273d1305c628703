//! One integration-test binary for the whole portal (one link step, one place to look).
//! Run through scripts/test, which starts the real services these tests use.

mod admin;
mod audioconf;
mod browser;
mod chat;
mod chat_room;
mod cluster;
mod common;
mod db;
mod faults;
mod keys;
mod login;
mod mail;
mod oidc;
mod oidc_flow;
mod room_audioconf;
mod sessions;
mod web;
