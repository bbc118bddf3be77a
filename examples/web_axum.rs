//! A web service on axum (tokio) with a pool: `GET /users/{id}` reads a row,
//! `POST /transfer?from=&to=&amount=` moves money in a transaction (409 when the balance is
//! short, and nothing moves). Each handler acquires a pooled connection for the request and
//! gives it back when the handler returns, also when the client goes away mid-request (the
//! future is dropped: a transaction left open is rolled back before the connection is reused).
//!
//! The example starts the server on a free port, calls it, checks the answers and stops.
//! `cargo xtask demo --all` runs it; it needs the `tokio` feature (the default).

#[cfg(feature = "tokio")]
mod app {
    use axum::extract::{Path, Query, State};
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde::{Deserialize, Serialize};

    use crate::support;

    #[derive(Serialize)]
    struct User {
        id: i32,
        name: String,
        balance: i64,
    }

    #[derive(Deserialize)]
    struct Transfer {
        from: i32,
        to: i32,
        amount: i64,
    }

    /// A database error as a response: the details go to the log, not to the client.
    fn internal(e: aiopg::Error) -> (StatusCode, String) {
        eprintln!("handler failed: {e}");
        (StatusCode::INTERNAL_SERVER_ERROR, "database error".into())
    }

    async fn user(
        State(pool): State<aiopg::Pool>,
        Path(id): Path<i32>,
    ) -> Result<Json<User>, (StatusCode, String)> {
        let conn = pool.acquire().await.map_err(internal)?;
        let row = conn
            .query_opt(
                "SELECT id, name, balance FROM example_users WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(internal)?
            .ok_or((StatusCode::NOT_FOUND, format!("no user {id}")))?;
        Ok(Json(User {
            id: row.get(0),
            name: row.get(1),
            balance: row.get(2),
        }))
    }

    async fn transfer(
        State(pool): State<aiopg::Pool>,
        Query(t): Query<Transfer>,
    ) -> Result<String, (StatusCode, String)> {
        let conn = pool.acquire().await.map_err(internal)?;
        let mut tx = conn.begin().await.map_err(internal)?;
        let moved = conn
            .execute(
                "UPDATE example_users SET balance = balance - $2 WHERE id = $1 AND balance >= $2",
                &[&t.from, &t.amount],
            )
            .await
            .map_err(internal)?;
        if moved == 0 {
            tx.rollback().await.map_err(internal)?;
            return Err((StatusCode::CONFLICT, "balance too low".into()));
        }
        conn.execute(
            "UPDATE example_users SET balance = balance + $2 WHERE id = $1",
            &[&t.to, &t.amount],
        )
        .await
        .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(format!("moved {} from {} to {}", t.amount, t.from, t.to))
    }

    pub async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let pool = aiopg::Pool::builder(support::dsn().as_str())
            .max_size(4)
            .build()
            .await?;
        pool.acquire()
            .await?
            .batch_execute(support::USERS_SQL)
            .await?;
        let app = Router::new()
            .route("/users/{id}", get(user))
            .route("/transfer", post(transfer))
            .with_state(pool.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        tokio::task::spawn_blocking(move || support::check_service(addr))
            .await
            .expect("the client thread")?;

        server.abort();
        let conn = pool.acquire().await?;
        conn.batch_execute("DROP TABLE example_users").await?;
        drop(conn);
        pool.close();
        pool.wait_closed().await?;
        Ok(())
    }
}

mod support;

#[cfg(feature = "tokio")]
fn main() {
    support::run(app::main());
}

#[cfg(not(feature = "tokio"))]
fn main() {
    eprintln!("web_axum runs on tokio: build it with the `tokio` feature");
    std::process::exit(2);
}
