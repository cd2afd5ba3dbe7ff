//! The admin API's command-line client.
