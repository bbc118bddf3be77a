//! The web service of `web_axum.rs` on smol: hyper serves HTTP/1.1 through smol-hyper's
//! adapters (smol's sockets and executor), with the same pool and the same handlers:
//! `GET /users/{id}` and `POST /transfer?from=&to=&amount=` in a transaction.
//!
//! The example starts the server on a free port, calls it, checks the answers and stops.
//! `cargo xtask demo --all` runs it on smol (`--no-default-features --features smol`).

#[cfg(feature = "smol")]
mod app {
    use std::sync::Arc;

    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Method, Request, Response, StatusCode};
    use smol_hyper::rt::FuturesIo;

    use crate::support;

    type Body = String;

    fn answer(status: StatusCode, body: impl Into<String>) -> Response<Body> {
        let mut r = Response::new(body.into());
        *r.status_mut() = status;
        r
    }

    /// `?from=1&to=2&amount=30` as `(from, to, amount)`.
    fn transfer_query(q: &str) -> Option<(i32, i32, i64)> {
        let mut from = None;
        let mut to = None;
        let mut amount = None;
        for pair in q.split('&') {
            match pair.split_once('=')? {
                ("from", v) => from = v.parse().ok(),
                ("to", v) => to = v.parse().ok(),
                ("amount", v) => amount = v.parse().ok(),
                _ => return None,
            }
        }
        Some((from?, to?, amount?))
    }

    async fn user(pool: &aiopg::Pool, id: i32) -> aiopg::Result<Response<Body>> {
        let conn = pool.acquire().await?;
        let row = conn
            .query_opt(
                "SELECT name, balance FROM example_users WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(match row {
            Some(r) => answer(
                StatusCode::OK,
                format!(
                    "{{\"id\":{id},\"name\":{:?},\"balance\":{}}}",
                    r.get::<&str>(0),
                    r.get::<i64>(1)
                ),
            ),
            None => answer(StatusCode::NOT_FOUND, format!("no user {id}")),
        })
    }

    async fn transfer(
        pool: &aiopg::Pool,
        (from, to, amount): (i32, i32, i64),
    ) -> aiopg::Result<Response<Body>> {
        let conn = pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let moved = conn
            .execute(
                "UPDATE example_users SET balance = balance - $2 WHERE id = $1 AND balance >= $2",
                &[&from, &amount],
            )
            .await?;
        if moved == 0 {
            tx.rollback().await?;
            return Ok(answer(StatusCode::CONFLICT, "balance too low"));
        }
        conn.execute(
            "UPDATE example_users SET balance = balance + $2 WHERE id = $1",
            &[&to, &amount],
        )
        .await?;
        tx.commit().await?;
        Ok(answer(
            StatusCode::OK,
            format!("moved {amount} from {from} to {to}"),
        ))
    }

    async fn route(
        pool: Arc<aiopg::Pool>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, std::convert::Infallible> {
        let path = req.uri().path();
        let res = match (req.method(), path.strip_prefix("/users/")) {
            (&Method::GET, Some(id)) => match id.parse() {
                Ok(id) => user(&pool, id).await,
                Err(_) => Ok(answer(StatusCode::BAD_REQUEST, "bad id")),
            },
            _ if req.method() == Method::POST && path == "/transfer" => {
                match req.uri().query().and_then(transfer_query) {
                    Some(t) => transfer(&pool, t).await,
                    None => Ok(answer(StatusCode::BAD_REQUEST, "want from, to, amount")),
                }
            }
            _ => Ok(answer(StatusCode::NOT_FOUND, "no such route")),
        };
        Ok(res.unwrap_or_else(|e| {
            eprintln!("handler failed: {e}");
            answer(StatusCode::INTERNAL_SERVER_ERROR, "database error")
        }))
    }

    pub async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let pool = Arc::new(
            aiopg::Pool::builder(support::dsn().as_str())
                .max_size(4)
                .build()
                .await?,
        );
        pool.acquire()
            .await?
            .batch_execute(support::USERS_SQL)
            .await?;
        let listener = smol::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server_pool = pool.clone();
        let server = smol::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let pool = server_pool.clone();
                smol::spawn(async move {
                    let service = service_fn(move |req| route(pool.clone(), req));
                    if let Err(e) = http1::Builder::new()
                        .serve_connection(FuturesIo::new(stream), service)
                        .await
                    {
                        eprintln!("connection failed: {e}");
                    }
                })
                .detach();
            }
        });

        smol::unblock(move || support::check_service(addr)).await?;

        drop(server); // cancels the accept loop
        let conn = pool.acquire().await?;
        conn.batch_execute("DROP TABLE example_users").await?;
        drop(conn);
        pool.close();
        pool.wait_closed().await?;
        Ok(())
    }
}

mod support;

#[cfg(feature = "smol")]
fn main() {
    support::run(app::main());
}

#[cfg(not(feature = "smol"))]
fn main() {
    eprintln!("web_smol runs on smol: build it with `--no-default-features --features smol`");
    std::process::exit(2);
}
