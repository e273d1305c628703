//! The one login shared by the three services: a Tchap (Matrix) account, a server-side session.

pub mod session;
